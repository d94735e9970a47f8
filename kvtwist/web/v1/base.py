# -*- test-case-name: tests.unit.test_web_v1 -*-
"""
What every v1 resource shares: the context it works in, 405 with C{Allow},
C{KV-Revision} on every answer, and the representation of an entry in
headers and JSON.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from kvtwist.auth import principal_of
from kvtwist.errors import InvalidInput
from kvtwist.interfaces import IKeyValueStore, ITransactionManager
from kvtwist.limits import Limits, WatcherCount
from kvtwist.model import DEFAULT_CONTENT_TYPE, Entry, Put
from kvtwist.web.resource import Answers405, Response, etag, not_found_response, query_names
from kvtwist.web.v1.leasing import lease_for_put
from kvtwist.wire import rfc3339, valid_content_type
# Re-exported for the v1 resources that describe entries with it.
from kvtwist.wire import value_fields as value_fields

if TYPE_CHECKING:
    from kvtwist.events import ChangeHub

#: The longest TTL accepted (ten years), so expiry stays a sane float.
MAX_TTL = 10 * 365 * 24 * 3600


class V1Context:
    """
    What the v1 tree works with: the store, transactions, the change feed
    and watcher slots, limits, the clock, and a random source (for
    long-poll jitter; injectable so tests can pin it).
    """

    def __init__(
        self,
        store: IKeyValueStore,
        transactions: ITransactionManager,
        limits: Limits,
        clock: IReactorTime,
        hub: "ChangeHub",
        random: Callable[[], float] = random.random,
        watchers: Optional[WatcherCount] = None,
    ) -> None:
        self.store = store
        self.transactions = transactions
        self.limits = limits
        self.clock = clock
        self.hub = hub
        self.watchers = watchers if watchers is not None else WatcherCount(limits.max_watchers)
        self.random = random


def owner_of(request: Request) -> Optional[str]:
    """
    The identity transactions belong to: the auth token's name (everyone
    is the same "anyone" when auth is off).
    """
    return principal_of(request).name


class V1Resource(Answers405):
    """Base of the v1 tree: 405 + Allow, KV-Revision everywhere."""

    def __init__(self, context: V1Context) -> None:
        super().__init__()
        self.context = context

    def getChild(self, path: bytes, request: Request) -> Resource:
        return V1NotFound(self.context)

    def decorate(self, response: Response) -> Response:
        response.headers[b"kv-revision"] = b"%d" % (self.context.store.revision,)
        return response


class V1NotFound(V1Resource):
    """A 404 inside the v1 tree (it still carries KV-Revision)."""

    def render(self, request: Request) -> int:
        return self.respond(request, lambda request: not_found_response())


def entry_headers(entry: Entry) -> Dict[bytes, bytes]:
    """The headers describing a committed entry."""
    headers = {
        b"etag": etag(entry.mod_revision),
        b"kv-create-revision": b"%d" % (entry.create_revision,),
        b"kv-version": b"%d" % (entry.version,),
    }
    if entry.expires is not None:
        headers[b"kv-expires"] = rfc3339(entry.expires).encode("ascii")
    return headers


def describe(entry: Entry, with_value: bool = False) -> Dict[str, Any]:
    """The JSON description of an entry in listings and batch results."""
    item: Dict[str, Any] = {
        "key": entry.key,
        "create_revision": entry.create_revision,
        "mod_revision": entry.mod_revision,
        "version": entry.version,
        "content_type": entry.content_type,
        "size": len(entry.value),
        "expires": rfc3339(entry.expires) if entry.expires is not None else None,
    }
    if with_value:
        item.update(value_fields(entry.value, entry.content_type))
    return item


def query_arg(request: Request, name: str) -> Optional[str]:
    """
    The decoded query argument C{name}, or None.

    @raise InvalidInput: if it is not UTF-8.
    """
    args = request.args
    values = args.get(name.encode("ascii")) if args is not None else None
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("bad-parameter", "the %s parameter is not UTF-8" % (name,))


def int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    """
    An integer query argument within [low, high].

    @raise InvalidInput: if it is not an integer in range.
    """
    raw = query_arg(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(
            "bad-parameter",
            "%s must be an integer from %d to %d" % (name, low, high),
            parameter=name,
        )
    return value


def flag_arg(request: Request, name: str) -> bool:
    """
    A boolean query flag: 1/true/yes, 0/false/no, absent (False), or the
    bare name (C{?keys}, as Consul clients send it: True).
    """
    raw = query_arg(request, name)
    if raw is None:
        return (name.encode("ascii"), False) in query_names(request)
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no", ""):
        return False
    raise InvalidInput("bad-parameter", "%s must be 1 or 0" % (name,), parameter=name)


def parse_ttl(raw: Any, clock: IReactorTime) -> Optional[float]:
    """
    The absolute expiry for a TTL given in seconds (a number or numeric
    string), or None when no TTL is given.

    @raise InvalidInput: unless 0 < ttl <= ten years.
    """
    if raw is None:
        return None
    try:
        ttl = float(raw)
    except (TypeError, ValueError):
        ttl = math.nan
    if isinstance(raw, bool) or not (0 < ttl <= MAX_TTL):
        raise InvalidInput(
            "bad-ttl", "ttl must be a number of seconds, above 0 and at most %d" % (MAX_TTL,)
        )
    return clock.seconds() + ttl


def content_type_of(request: Request) -> str:
    """
    The Content-Type a value is stored with (default
    C{application/octet-stream}).

    @raise InvalidInput: for a non-ASCII or oversized header.
    """
    raw = request.getHeader(b"content-type")
    if raw is None:
        return DEFAULT_CONTENT_TYPE
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInput("bad-content-type", "the content type is not ASCII")
    return check_content_type(text)


def check_content_type(value: str) -> str:
    """
    A content type fit to store and send back as a header: printable ASCII,
    1 to 255 characters, no surrounding spaces.

    @raise InvalidInput: otherwise.
    """
    if not valid_content_type(value):
        raise InvalidInput("bad-content-type", "the content type is not valid")
    return value.strip()


def put_from(
    request: Request, key: str, body: bytes, clock: IReactorTime, store: IKeyValueStore
) -> Put:
    """
    The write a C{PUT} of C{body} to C{key} asks for: C{?ttl=} makes the
    key expire by itself, C{?lease=} attaches it to a lease (with both,
    the key goes at whichever comes first).
    """
    return Put(
        key,
        body,
        content_type_of(request),
        parse_ttl(query_arg(request, "ttl"), clock),
        lease_for_put(store, query_arg(request, "lease")),
    )
