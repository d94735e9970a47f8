# -*- test-case-name: tests.unit.test_web_seed,tests.unit.test_web_v1 -*-
"""
What clients do with a transaction, over a store: read through it, stage
JSON pairs, stage deletes, stage one value with preconditions.

The seed routes use these on the shared queue (a non-isolated
transaction); the v1 transaction routes use them on a client's own
transaction, whichever L{ITransaction} holds it (node memory or etcd). One
way to stage and commit, not two.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from kvtwist.errors import KeyNotFound, LimitExceeded
from kvtwist.interfaces import IKeyValueStore, ITransaction, ITransactionView
from kvtwist.limits import Limits
from kvtwist.model import JSON_CONTENT_TYPE, Check, Delete, Entry, Incr, Put
from kvtwist.store.rules import counter_value, increment
from kvtwist.strictjson import check_key, encode


def check_key_count(limits: Limits, count: int) -> None:
    """
    @raise LimitExceeded: if one request names more keys than allowed.
    """
    if count > limits.max_keys_per_request:
        raise LimitExceeded("max_keys_per_request", limits.max_keys_per_request, count)


def _revisions(
    txn: ITransactionView, keys: Iterable[str], found: Dict[str, Entry]
) -> Dict[str, int]:
    """The revisions of C{keys} as committed (0: absent), for keys C{txn} has not touched yet."""
    if not txn.isolated:
        return {}
    return {
        key: found[key].mod_revision if key in found else 0
        for key in keys
        if key not in txn.observed
    }


async def read(
    store: IKeyValueStore, txn: ITransaction, key: str
) -> Union[Put, Entry, None]:
    """
    Read C{key} as C{txn} sees it: its staged op over the committed state.

    @return: the staged L{Put}, or the committed L{Entry}, or L{None} when
        the key is absent or its delete is staged.
    """
    view = await txn.view()
    staged = view.staged(key)
    if isinstance(staged, Put):
        return staged
    if isinstance(staged, Delete):
        return None
    entry = await store.get(key)
    observed = _revisions(view, [key], {key: entry} if entry is not None else {})
    if observed:
        await txn.record(observed=observed)
    return entry


async def stage_pairs(
    store: IKeyValueStore, txn: ITransaction, pairs: Dict[str, Any], limits: Limits
) -> Dict[str, str]:
    """
    Stage a JSON value for each key of C{pairs} (the seed's C{/set} shape).

    @return: C{{key: "created" | "updated"}}, by whether the key exists in
        the committed store.
    @raise kvtwist.errors.InvalidInput: for a bad key; nothing is staged.
    @raise LimitExceeded: past a limit; nothing is staged.
    """
    check_key_count(limits, len(pairs))
    ops = [Put(check_key(key), encode(value), JSON_CONTENT_TYPE) for key, value in pairs.items()]
    # Only an isolated transaction records what it saw; the seed's queue
    # needs no view (with --workers, a view is a trip to the owner).
    view = await txn.view() if txn.isolated else None
    committed = await store.get_many(list(pairs))
    await txn.record(ops, _revisions(view, pairs, committed) if view is not None else {})
    return {key: "updated" if key in committed else "created" for key in pairs}


async def stage_deletes(
    store: IKeyValueStore,
    txn: ITransaction,
    keys: Sequence[str],
    limits: Limits,
    preconditions: Sequence[Check] = (),
) -> ITransactionView:
    """
    Stage a delete of each of C{keys}, recording C{preconditions}.

    @return: the transaction's view after staging.
    @raise KeyNotFound: naming every key that is neither committed nor
        staged as a write; nothing is staged then.
    """
    check_key_count(limits, len(keys))
    for key in keys:
        check_key(key)
    unique = list(dict.fromkeys(keys))
    view = await txn.view()
    committed = await store.get_many(unique)
    missing: List[str] = []
    for key in unique:
        staged = view.staged(key)
        # A transaction sees its own staged delete (the key is gone for it);
        # the seed's shared queue only asked "committed or staged".
        hidden = isinstance(staged, Delete) and view.isolated
        exists = isinstance(staged, Put) or (key in committed and not hidden)
        if not exists:
            missing.append(key)
    if missing:
        # What was read still counts as seen, as it would for a GET.
        observed = _revisions(view, unique, committed)
        if observed:
            await txn.record(observed=observed)
        raise KeyNotFound(missing)
    return await txn.record(
        [Delete(key) for key in unique], _revisions(view, unique, committed), preconditions
    )


async def stage_increment(
    store: IKeyValueStore, txn: ITransaction, key: str, by: int
) -> Tuple[int, ITransactionView]:
    """
    Read C{key} through C{txn} (its staged write, else the committed value,
    recorded as read) and stage that integer plus C{by}. The commit then
    conflicts, as for any key the transaction read, if another commit
    changed the counter meanwhile: two transactions never both add to the
    same value.

    @return: the new value, and the transaction's view after staging.
    @raise NotAnInteger: when the key holds no JSON integer; nothing staged.
    """
    found = await read(store, txn, check_key(key))
    put = increment(found, Incr(key, by))
    view = await txn.record([put])
    return counter_value(key, put.value, put.content_type), view


async def stage_put(
    store: IKeyValueStore,
    txn: ITransaction,
    put: Put,
    preconditions: Sequence[Check] = (),
) -> Tuple[Optional[Entry], ITransactionView]:
    """
    Stage one write, recording C{preconditions} for the commit.

    @return: the committed entry the write will replace (if any), and the
        transaction's view after staging.
    """
    view = await txn.view()
    found = await store.get_many([put.key])
    after = await txn.record([put], _revisions(view, [put.key], found), preconditions)
    return found.get(put.key), after
