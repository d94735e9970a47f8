# -*- test-case-name: tests.unit.test_workers_amp -*-
"""
The AMP vocabulary between the owner and its workers (C{--workers N}).

Three commands, each answered with a Deferred:

  - L{Call} (worker to owner): one whitelisted store or transaction method
    by name, with its arguments; answered with its result or its domain
    error (L{kvtwist.errors}). Adding a forwarded method is one entry in the
    owner's table (L{kvtwist.owner.OwnerProtocol}) and one line on the
    worker's side (L{kvtwist.store.remote}), not a new command: the
    arguments are L{kvtwist.model} values, which travel as they are.
  - L{Feed} (owner to worker): commits in revision order, the change feed
    that keeps a worker's cache and watches current. The owner answers a
    commit only once every worker has answered its L{Feed}.
  - L{Scrape} (owner to worker): the worker's metrics exposition.

Values cross as pickles read by L{RestrictedUnpickler}, which builds only
builtins and the classes of L{kvtwist.model}: the channel is a socketpair
between a parent and the children it spawned, and even so a box cannot name
any other class. A value larger than AMP's 64 KiB limit is split over
several keys of the box (L{Pickled}).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import is_dataclass
from typing import Any, Dict, Tuple, Type

from twisted.protocols import amp

from kvtwist import errors, model

#: The largest value AMP carries under one key.
CHUNK = amp.MAX_VALUE_LENGTH

#: The classes a box may build: the store contract's plain data, every
#: dataclass of L{kvtwist.model} (so an op added there crosses as well).
MODEL_CLASSES = frozenset(
    name
    for name, value in vars(model).items()
    if isinstance(value, type) and is_dataclass(value) and value.__module__ == model.__name__
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds builtins and L{kvtwist.model} values only."""

    def find_class(self, module: str, name: str) -> Any:
        if module == model.__name__ and name in MODEL_CLASSES:
            return getattr(model, name)
        raise pickle.UnpicklingError("%s.%s may not cross to another process" % (module, name))


#: The first byte of every pickle L{dumps} makes (the PROTO opcode).
PROTO = pickle.PROTO


def dumps(value: Any) -> bytes:
    """C{value} as bytes for L{loads}."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    """The value L{dumps} gave C{data} for (restricted: L{RestrictedUnpickler})."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


class Dumped:
    """A value pickled once (L{dumps}), for a L{Pickled} argument sent to several peers."""

    def __init__(self, value: Any) -> None:
        self.data = dumps(value)


class Pickled(amp.Argument):
    """
    Any value of builtins and L{kvtwist.model} classes, of any size. A
    pickle that fits one AMP value is C{NAME} itself (every box is parsed
    key by key in Python, so the usual small value costs one key, not
    two); a larger one is cut into AMP-sized chunks under C{NAME.0},
    C{NAME.1}, ... and C{NAME} holds their count, in decimal digits (a
    pickle starts with its protocol byte, never a digit). A L{Dumped}
    value is sent as the value it was made of, pickled once.
    """

    def toBox(self, name: bytes, strings: Dict[bytes, bytes], objects: Dict[str, Any], proto) -> None:
        value = objects[name.decode("ascii")]
        data = value.data if isinstance(value, Dumped) else dumps(value)
        if len(data) <= CHUNK:
            strings[name] = data
            return
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        strings[name] = b"%d" % (len(chunks),)
        for index, chunk in enumerate(chunks):
            strings[b"%s.%d" % (name, index)] = chunk

    def fromBox(self, name: bytes, strings: Dict[bytes, bytes], objects: Dict[str, Any], proto) -> None:
        data = strings[name]
        if data[:1] == PROTO:
            objects[name.decode("ascii")] = loads(data)
            return
        count = int(data)
        data = b"".join(strings[b"%s.%d" % (name, index)] for index in range(count))
        objects[name.decode("ascii")] = loads(data)


# -- domain errors across the wire -------------------------------------------

#: The domain errors a call may fail with, by class name.
ERRORS: Dict[str, Type[errors.KVError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.KVError)
}


def error_state(error: errors.KVError) -> Tuple[str, Dict[str, Any]]:
    """A domain error as plain data: its class name and attributes."""
    return type(error).__name__, dict(vars(error))


def error_from_state(name: str, state: Dict[str, Any]) -> errors.KVError:
    """
    The domain error L{error_state} described (a L{errors.StoreUnavailable}
    if the name is not one of L{ERRORS}).
    """
    cls = ERRORS.get(name)
    if cls is None:
        return errors.StoreUnavailable("the store's owner failed with %s" % (name,))
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("detail", ""))
    vars(error).update(state)
    return error


# -- the commands ------------------------------------------------------------


class Call(amp.Command):
    """
    Worker to owner: C{call} is C{(method, args)}, run the whitelisted
    method C{method} with C{args}. Answered C{answer}, C{(ok, result)}:
    C{ok} says whether C{result} is the method's result or a domain error
    (L{error_state}); other failures are answered as AMP errors.

    One key each way (besides AMP's own): a box is parsed key by key in
    Python, and every store call pays for it.
    """

    arguments = [(b"call", Pickled())]
    response = [(b"answer", Pickled())]
    requiresAnswer = True


class Feed(amp.Command):
    """
    Owner to worker: C{feed} is C{(results, state)}. C{results}, a list of
    L{kvtwist.model.CommitResult} in revision order (one group commit's),
    to apply to the worker's cache and change feed before answering;
    C{state}, the store's attributes after them that a worker mirrors
    (L{kvtwist.store.remote.STATE}: key count, compaction, leases). A Feed
    of no commits brings C{state} alone (after a compaction).
    """

    arguments = [(b"feed", Pickled())]
    # Inherited (ClassVar) from Command: none.


class Scrape(amp.Command):
    """Owner to worker: the worker's Prometheus text exposition."""

    # Inherited (ClassVar) from Command: none.
    response = [(b"text", Pickled())]
