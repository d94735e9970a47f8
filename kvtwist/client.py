"""
Script kvcache from Twisted code with treq.

Every function takes the HTTP client first: the C{treq} module itself, a
L{treq.client.HTTPClient}, or a L{treq.testing.StubTreq} in tests (anything
with treq's C{request(method, url, **kwargs)}). Then comes the server's base
URL (C{"http://127.0.0.1:8080"}; a path prefix such as
C{"https://host/kv"} is kept), then the operation's arguments. Each returns
a L{Deferred} (L{iter_pages} returns an async iterator).

    from twisted.internet.task import react
    import treq
    from kvtwist import client

    async def main(reactor):
        url = "http://127.0.0.1:8080"
        await client.put(treq, url, "flags/beta", b"true",
                         content_type="application/json")
        entry = await client.get_entry(treq, url, "flags/beta")
        print(entry.value, entry.mod_revision)

        txn = await client.begin(treq, url)
        try:
            await txn.put("jobs/1", b"queued")
            await txn.delete("jobs/0")
            print(await txn.commit())        # {"revision": ..., "ops": 2}
        except client.ConflictError as e:
            print("somebody else won:", e.conflicts)

    react(main)

The seed routes (SPEC section 4), JSON values in one shared staging queue:

    - L{get}: C{GET /{key}}, the committed JSON value.
    - L{set_many}: C{POST /set}, stage writes in the server's shared queue.
    - L{delete}: C{DELETE /set}, stage deletes in the shared queue.
    - L{commit}: C{POST /commit}, apply the shared queue atomically and
      durably.

The v1 routes (SPEC section 5), values as bytes with a content type and
revisions:

    - L{put}: C{PUT /v1/kv/{key}}, a one-op commit, optionally conditional.
    - L{get_entry}: C{GET /v1/kv/{key}}, the value and its metadata as a
      L{KeyValue}.
    - L{remove}: C{DELETE /v1/kv/{key}}, a one-op commit. (Not called
      C{delete}: that name is the seed's staged delete.)
    - L{list_keys}: C{GET /v1/kv/?prefix=...}, one page of a listing;
      L{iter_pages} and L{list_all} follow C{next} through every page.
    - L{begin}: C{POST /v1/txn}, a L{Transaction} spanning several requests
      (C{put}, C{delete}, C{get}, C{set_many}, C{describe}, C{commit},
      C{abort}).
    - L{batch}: C{POST /v1/batch}, a one-request transaction.
    - L{transact}: run batch-shaped ops through a multi-request transaction
      (what C{kvtwist txn} does).

Watching (SPEC section 5.3):

    - L{watch}: C{GET /v1/watch?prefix=P}, the Server-Sent Events feed as
      a L{Watch}: an async iterator of L{WatchEvent}s that resumes by itself
      after a disconnect (C{Last-Event-ID}), with no event lost or
      repeated, and raises L{HistoryGone} when the server can no longer
      replay what it missed.
    - L{wait_for}: C{GET /v1/kv/{key}?index=N&wait=S}, one long-poll.

        async with client.watch(treq, url, "jobs/") as events:
            async for event in events:
                print(event.revision, event.kind, event.key)

Staged seed writes live in one queue shared by every client until somebody
commits; transactions are each client's own. Every function accepts
C{token=...} (sent as C{Authorization: Bearer <token>}) for servers with auth
turned on.

Errors: an answer the server gives as an error fails the Deferred with
L{KVClientError}: L{NotFoundError} for 404, L{ConflictError} for 409 (a
transaction or batch that was not applied), L{PreconditionFailedError} for
412 (an C{If-Match} / C{If-None-Match} that did not hold); each carries the
status and the problem+json document. Arguments this module can tell are
wrong before sending anything (an empty key, a value that is not JSON, a
str where bytes are needed) raise C{ValueError} or C{TypeError} at once.
Connection failures arrive as Twisted's own errors (C{ConnectError},
C{ResponseFailed}, ...), unchanged.

New routes are added in the same shape: a public C{name(http, url, ...,
token=None)} that checks its arguments at once, sends with L{_request} and
decodes the answer in a callback, with a docstring giving the result and
the errors.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import math
import random as _random
import re
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Collection,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)
from urllib.parse import quote

import treq
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

__all__ = [
    "KVClientError",
    "NotFoundError",
    "ConflictError",
    "PreconditionFailedError",
    "KeyValue",
    "Transaction",
    "DEFAULT_CONTENT_TYPE",
    "get",
    "set_many",
    "delete",
    "commit",
    "put",
    "get_entry",
    "remove",
    "list_keys",
    "iter_pages",
    "list_all",
    "begin",
    "batch",
    "transact",
    "check_ops",
    "watch",
    "Watch",
    "WatchEvent",
    "HistoryGone",
    "wait_for",
    "EventStreamParser",
    "ServerSentEvent",
    "SSEComment",
]

JSON_CONTENT_TYPE = b"application/json"
#: What the server stores a value with when no Content-Type is given.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: The Accept header of requests answered with JSON (or a problem).
_ACCEPT_JSON = b"application/json, application/problem+json"
#: The Accept header of value reads: the value comes back as it was stored.
_ACCEPT_ANY = b"*/*"
#: How much of a non-JSON error body is quoted in an error message.
_SNIPPET_CHARS = 200

#: The op kinds of L{batch} and L{transact}.
OP_KINDS = ("set", "delete", "check", "check-absent", "get")


class KVClientError(Exception):
    """
    The server answered with an error (or with something that is not a
    kvcache answer).

    @ivar status: the HTTP status code.
    @ivar problem: the problem+json document as a dict: C{type}, C{title},
        C{status}, C{detail}, C{code} and extras such as C{missing} or
        C{limit}. When the server did not send problem+json (a proxy's HTML
        page, say), a stand-in with C{code} C{"http-<status>"} and a
        C{detail} quoting the start of the body.
    """

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(status, dict(problem))
        self.status = status
        self.problem: Dict[str, Any] = dict(problem)

    @property
    def code(self) -> Optional[str]:
        """The problem's stable C{code}, if it has one."""
        code = self.problem.get("code")
        return code if isinstance(code, str) else None

    @property
    def detail(self) -> str:
        """The problem's C{detail}, else its C{title}, else the status phrase."""
        for field in ("detail", "title"):
            value = self.problem.get(field)
            if isinstance(value, str) and value:
                return value
        return _phrase(self.status)

    def __str__(self) -> str:
        code = self.code
        if code:
            return "%d %s: %s" % (self.status, code, self.detail)
        return "%d: %s" % (self.status, self.detail)


class NotFoundError(KVClientError):
    """
    A 404: the key does not exist (C{code} C{"key-not-found"}, with the keys
    in C{problem["missing"]}), the transaction is unknown, finished or
    expired (C{"transaction-not-found"}), or the URL is not a kvcache route
    (C{"not-found"}).
    """

    @property
    def missing(self) -> list:
        """The keys the server named as missing (empty if it named none)."""
        missing = self.problem.get("missing")
        return list(missing) if isinstance(missing, list) else []


class ConflictError(KVClientError):
    """
    A 409: a transaction commit or a batch was refused and nothing of it
    was applied. A retry from the start (re-reading what changed) may
    succeed.

    Each conflict names a check that did not hold: C{{"key", "check"
    ("equals" | "absent" | "present"), "expected" (a revision; 0 means
    absent), "actual" (the key's revision then; 0 if absent), "tag"}}. The
    tag says where the check came from: C{"observed"} (another commit
    changed a key this transaction read or staged), C{"If-Match"} /
    C{"If-None-Match"} (a precondition staged with the write), or, for a
    batch, the index of the op.

    L{transact} raises this error too when one of its C{check} ops does not
    hold; it finds that out before committing, so the problem then has
    C{"detected": "client"} and the transaction has been aborted.
    """

    @property
    def conflicts(self) -> List[Dict[str, Any]]:
        """Every check that did not hold (empty if the server named none)."""
        conflicts = self.problem.get("conflicts")
        return [c for c in conflicts if isinstance(c, dict)] if isinstance(conflicts, list) else []

    @property
    def failed(self) -> List[int]:
        """The indexes of the failing ops of a batch (empty for a transaction)."""
        failed = self.problem.get("failed")
        if not isinstance(failed, list):
            return []
        return [i for i in failed if type(i) is int]


class PreconditionFailedError(KVClientError):
    """
    A 412: the C{If-Match} or C{If-None-Match} of a L{put} or L{remove} did
    not hold; nothing was written.
    """

    @property
    def key(self) -> Optional[str]:
        """The key whose precondition failed, if the server named it."""
        key = self.problem.get("key")
        return key if isinstance(key, str) else None

    @property
    def current_revision(self) -> Optional[int]:
        """The key's revision when the check ran (0: absent), if given."""
        revision = self.problem.get("current_revision")
        return revision if type(revision) is int else None


#: The error class of each status that has its own.
_ERRORS = {404: NotFoundError, 409: ConflictError, 412: PreconditionFailedError}


@dataclass(frozen=True)
class KeyValue:
    """
    A value read through the v1 API (L{get_entry}, L{Transaction.get}).

    @ivar key: the key.
    @ivar value: the stored bytes, exactly as written.
    @ivar content_type: the Content-Type it was stored with.
    @ivar mod_revision: the revision of the commit that last wrote it (its
        ETag); L{None} for a write only staged in a transaction.
    @ivar version: how many times it was written since it was created;
        L{None} when staged.
    @ivar create_revision: the revision of the commit that created it;
        L{None} when staged.
    @ivar expires: when it expires, as the server's RFC 3339 UTC string
        (C{"2030-01-01T00:00:00.000Z"}), or L{None} without a TTL. Kept as
        text, like the C{expires} of L{list_keys} items.
    @ivar revision: the store's global revision when it was read
        (C{KV-Revision}), if the server sent it.
    @ivar staged: whether this is a write staged in the transaction it was
        read through, not a committed value.
    """

    key: str
    value: bytes
    content_type: str
    mod_revision: Optional[int]
    version: Optional[int]
    create_revision: Optional[int]
    expires: Optional[str]
    revision: Optional[int] = None
    staged: bool = False

    @property
    def etag(self) -> Optional[str]:
        """The ETag (C{'"<mod_revision>"'}), for an C{if_match=}; L{None} if staged."""
        return None if self.mod_revision is None else '"%d"' % (self.mod_revision,)

    def as_item(self) -> Dict[str, Any]:
        """
        The entry in the shape of a listing item with values (and of a
        batch C{get} result): C{key}, C{create_revision}, C{mod_revision},
        C{version}, C{content_type}, C{size}, C{expires}, and C{value} (JSON
        content types whose bytes parse) or C{value_base64}. A staged write
        has C{staged: true} in place of the revisions.
        """
        item: Dict[str, Any] = {"key": self.key}
        if self.staged:
            item["staged"] = True
        else:
            item.update(
                create_revision=self.create_revision,
                mod_revision=self.mod_revision,
                version=self.version,
            )
        item.update(content_type=self.content_type, size=len(self.value), expires=self.expires)
        item.update(value_fields(self.value, self.content_type))
        return item


def is_json_type(content_type: str) -> bool:
    """Whether a Content-Type is JSON (C{application/json} or a C{+json} type)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def value_fields(value: bytes, content_type: str) -> Dict[str, Any]:
    """
    A value for JSON output, as the server's listings give it:
    C{{"value": <decoded JSON>}} for a JSON content type whose bytes parse,
    else C{{"value_base64": "..."}}.
    """
    if is_json_type(content_type):
        try:
            return {"value": json.loads(value.decode("utf-8"))}
        except ValueError:
            pass
    return {"value_base64": base64.b64encode(value).decode("ascii")}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "HTTP error"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _SNIPPET_CHARS:
        text = text[:_SNIPPET_CHARS] + "..."
    return text


def _problem_from_body(status: int, body: bytes) -> Dict[str, Any]:
    """
    The problem document in an error answer's C{body}.

    Decoded defensively: a body that is not a JSON object (HTML from a
    proxy, plain text, nothing, invalid UTF-8) becomes a stand-in problem
    with C{code} C{"http-<status>"} and the body's first characters as its
    C{detail}, so every error still reads well.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except ValueError:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        document = None
    if isinstance(document, dict):
        return document
    snippet = _one_line(body.decode("utf-8", "replace"))
    return {
        "status": status,
        "title": _phrase(status),
        "detail": snippet or _phrase(status),
        "code": "http-%d" % (status,),
    }


def _error(status: int, body: bytes) -> KVClientError:
    problem = _problem_from_body(status, body)
    cls = _ERRORS.get(status, KVClientError)
    return cls(status, problem)


def _bad_response(status: int, detail: str) -> KVClientError:
    return KVClientError(status, {"status": status, "detail": detail, "code": "bad-response"})


def _segment(key: str) -> str:
    """
    C{key} as one percent-encoded path segment: C{/}, spaces, C{%}, C{?}
    and non-ASCII are all escaped, and the dot segments C{.} and C{..}
    (which URL normalisation in proxies and some clients would remove) are
    spelled C{%2E}.

    On the v1 routes the server also accepts C{/} unescaped (C{a%2Fb} and
    C{a/b} are the same key there); escaping it keeps every key one segment
    on every route, and keeps a key such as C{"a/../b"} from being
    normalised away.

    @raise TypeError: if C{key} is not a C{str}.
    @raise ValueError: if it is empty or not encodable as UTF-8.
    """
    if not isinstance(key, str):
        raise TypeError("keys are str, not %s" % (type(key).__name__,))
    if not key:
        raise ValueError("the key is empty")
    segment = quote(key, safe="", encoding="utf-8", errors="strict")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return segment


def _join(url: str, *segments: str) -> str:
    return url.rstrip("/") + "/" + "/".join(segments)


def _key_url(url: str, key: str) -> str:
    return _join(url, "v1", "kv", _segment(key))


def _query(**params: Optional[str]) -> str:
    """A query string (with its C{?}) of the parameters that are not L{None}."""
    parts = [
        "%s=%s" % (name, quote(value, safe="", encoding="utf-8", errors="strict"))
        for name, value in params.items()
        if value is not None
    ]
    return "?" + "&".join(parts) if parts else ""


def _headers(
    token: Optional[str],
    content_type: Optional[bytes] = None,
    accept: bytes = _ACCEPT_JSON,
    extra: Iterable[Tuple[bytes, bytes]] = (),
) -> Headers:
    """
    The request headers, all as bytes: Twisted caches header names in one
    dict for both types, and a str name next to its bytes twin there is a
    BytesWarning under C{python -b}.

    @raise ValueError: for a token that cannot be a header value.
    """
    headers = Headers({b"Accept": [accept]})
    if content_type is not None:
        headers.setRawHeaders(b"Content-Type", [content_type])
    for name, value in extra:
        headers.setRawHeaders(name, [value])
    if token is not None:
        if not token or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
            # Refuses header injection, with a clearer message than Twisted's.
            raise ValueError("a token is printable ASCII without spaces")
        headers.setRawHeaders(b"Authorization", [b"Bearer " + token.encode("ascii")])
    return headers


def _json_body(document: Any) -> bytes:
    """
    Strict JSON for a request body.

    @raise ValueError: for NaN or Infinity, or lone surrogates.
    @raise TypeError: for a value that is not JSON data.
    """
    return json.dumps(
        document, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


@dataclass(frozen=True)
class _Answer:
    """A whole answer: its status, headers and body."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> Optional[str]:
        """The last value of header C{name} as text, or L{None}."""
        values = self.headers.getRawHeaders(name)
        return values[-1].decode("latin-1") if values else None

    def int_header(self, name: bytes) -> Optional[int]:
        """Header C{name} as a non-negative integer, or L{None}."""
        value = self.header(name)
        if value is None:
            return None
        value = value.strip()
        return int(value) if value.isdigit() and value.isascii() else None


async def _exchange(
    http: Any,
    method: str,
    url: str,
    expected: Collection[int],
    headers: Headers,
    body: Optional[bytes],
) -> _Answer:
    kwargs: Dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["data"] = body
    response = await http.request(method, url, **kwargs)
    # Read the body even for errors: it holds the problem document, and an
    # unread body would keep the connection busy.
    content = await treq.content(response)
    if response.code not in expected:
        raise _error(response.code, content)
    return _Answer(response.code, response.headers, content)


def _request(
    http: Any,
    method: str,
    url: str,
    expected: Collection[int],
    token: Optional[str],
    body: Optional[bytes] = None,
    *,
    content_type: Optional[bytes] = JSON_CONTENT_TYPE,
    accept: bytes = _ACCEPT_JSON,
    extra_headers: Iterable[Tuple[bytes, bytes]] = (),
) -> Deferred:
    """
    Send one request and read the whole answer. Builds the headers first,
    so a bad token raises at once, before any I/O.

    @param content_type: the Content-Type of C{body} (sent only with a body).
    @return: a Deferred firing with an L{_Answer} if the status is in
        C{expected}.
    @raise ValueError: at once, for a token that cannot be a header value.
    @raise KVClientError: (in the Deferred) for any other status (see
        L{_ERRORS} for the subclasses).
    """
    headers = _headers(
        token, content_type if body is not None else None, accept, extra_headers
    )
    return Deferred.fromCoroutine(_exchange(http, method, url, expected, headers, body))


def _send(
    http: Any,
    method: str,
    url: str,
    expected: Collection[int],
    token: Optional[str],
    body: Optional[bytes] = None,
) -> Deferred:
    """
    L{_request} with a JSON body (if any), firing with C{(status, body)}.
    """
    d = _request(http, method, url, expected, token, body)
    return d.addCallback(lambda answer: (answer.status, answer.body))


def _decode_json(status: int, body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        raise _bad_response(
            status,
            "the server's answer is not JSON: "
            + repr(_one_line(body.decode("utf-8", "replace"))),
        )


def _decode_object(status: int, body: bytes) -> Dict[str, Any]:
    document = _decode_json(status, body)
    if not isinstance(document, dict):
        raise _bad_response(status, "expected a JSON object from the server")
    return document


# -- the seed routes --------------------------------------------------------


def get(http: Any, url: str, key: str, *, token: Optional[str] = None) -> Deferred:
    """
    Read the committed value of C{key} (C{GET /{key}}); staged writes are
    not visible.

    Keys named like a seed operation (C{set}, C{commit}) are not reachable
    on this route: the server answers 404 for them (L{get_entry} reaches
    every key).

    @return: a Deferred firing with the decoded JSON value.
    @raise ValueError: at once, for an empty key.
    @raise NotFoundError: (in the Deferred) if the key is not committed.
    @raise KVClientError: (in the Deferred) for any other error answer.
    """
    d = _send(http, "GET", _join(url, _segment(key)), {200}, token)
    return d.addCallback(lambda answer: _decode_json(*answer))


def set_many(
    http: Any, url: str, pairs: Mapping[str, Any], *, token: Optional[str] = None
) -> Deferred:
    """
    Stage a JSON value for each key of C{pairs} in the server's shared queue
    (C{POST /set}); nothing is visible until a L{commit}. A later stage of a
    key replaces an earlier one.

    @return: a Deferred firing with C{{key: "created" | "updated"}}, by
        whether each key is new to the committed store.
    @raise ValueError: at once, if a value is not strict JSON (NaN,
        Infinity, lone surrogates); C{TypeError} if it is not JSON at all.
    @raise KVClientError: (in the Deferred) if the server refuses the
        pairs: 400 for a bad key, 413/429 past a limit. Nothing is staged
        then.
    """
    body = _json_body(dict(pairs))
    d = _send(http, "POST", _join(url, "set"), {200, 201}, token, body)
    return d.addCallback(lambda answer: _decode_object(*answer))


def delete(http: Any, url: str, *keys: str, token: Optional[str] = None) -> Deferred:
    """
    Stage a delete of each of C{keys} in the shared queue (C{DELETE /set}
    with a JSON list, so every key works, including C{set} and C{commit});
    applied by the next L{commit}. All or nothing: if any key is unknown,
    nothing is staged. (L{remove} deletes one key at once, on the v1 API.)

    @return: a Deferred firing with C{{key: "deleted"}}.
    @raise ValueError: at once, if no key is given.
    @raise TypeError: at once, if a key is not a C{str}.
    @raise NotFoundError: (in the Deferred) if a key is neither committed
        nor staged; its C{missing} names them.
    @raise KVClientError: (in the Deferred) for other error answers.
    """
    if not keys:
        raise ValueError("delete needs at least one key")
    for key in keys:
        if not isinstance(key, str):
            raise TypeError("keys are str, not %s" % (type(key).__name__,))
    body = _json_body(list(keys))
    d = _send(http, "DELETE", _join(url, "set"), {200}, token, body)
    return d.addCallback(lambda answer: _decode_object(*answer))


def commit(http: Any, url: str, *, token: Optional[str] = None) -> Deferred:
    """
    Apply the shared queue atomically and durably (C{POST /commit}). It
    publishes what every client staged, not only this one's.

    @return: a Deferred firing with L{None} once the commit is on disk
        (also when nothing was staged).
    @raise KVClientError: (in the Deferred) if the server refuses, e.g.
        503 when its store is unavailable (the writes stay staged then).
    """
    d = _send(http, "POST", _join(url, "commit"), {204}, token)
    return d.addCallback(lambda answer: None)


# -- argument checks for the v1 routes ----------------------------------------


def _value_bytes(value: Any) -> bytes:
    """
    @raise TypeError: unless C{value} is bytes-like. A C{str} is refused
        rather than guessed at: encode it yourself, and say its type with
        C{content_type} (C{"text/plain; charset=utf-8"}).
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("values are bytes, not %s" % (type(value).__name__,))
    return bytes(value)


def _content_type(content_type: Any) -> bytes:
    """
    @raise TypeError: unless it is a C{str}.
    @raise ValueError: unless it is non-empty printable ASCII (what a
        header value can carry).
    """
    if not isinstance(content_type, str):
        raise TypeError("content_type is a str, not %s" % (type(content_type).__name__,))
    if not content_type.strip() or not all(0x20 <= ord(c) <= 0x7E for c in content_type):
        raise ValueError("content_type is non-empty printable ASCII: %r" % (content_type,))
    return content_type.encode("ascii")


def _ttl(ttl: Any) -> Optional[str]:
    """
    C{ttl} as the C{?ttl=} text, or L{None}.

    @raise TypeError: unless it is an int or a float (not a bool).
    @raise ValueError: unless it is above 0 and finite (the server has the
        last word on the upper bound).
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError("ttl is a number of seconds, not %s" % (type(ttl).__name__,))
    if not (0 < ttl and math.isfinite(ttl)):
        raise ValueError("ttl must be above 0 seconds and finite: %r" % (ttl,))
    return "%d" % (ttl,) if isinstance(ttl, int) else repr(float(ttl))


def _if_match(if_match: Any) -> bytes:
    """
    The C{If-Match} header value for a revision (an int), an ETag as
    L{put} and L{KeyValue.etag} give it (C{'"5"'}), its digits (C{"5"}),
    or C{"*"} (the key exists).

    @raise TypeError: for another type (a bool included).
    @raise ValueError: for a str that is none of those.
    """
    if isinstance(if_match, bool) or not isinstance(if_match, (int, str)):
        raise TypeError(
            "if_match is a revision, an ETag or '*', not %s" % (type(if_match).__name__,)
        )
    if isinstance(if_match, int):
        if if_match < 0:
            raise ValueError("if_match must not be negative: %d" % (if_match,))
        return b'"%d"' % (if_match,)
    if if_match == "*":
        return b"*"
    digits = if_match
    if len(digits) >= 2 and digits[0] == digits[-1] == '"':
        digits = digits[1:-1]
    if not (digits.isdigit() and digits.isascii()):
        raise ValueError('if_match is a revision, an ETag ("5") or "*": %r' % (if_match,))
    return b'"%d"' % (int(digits),)


def _conditions(if_match: Any, if_none_match: bool) -> List[Tuple[bytes, bytes]]:
    headers: List[Tuple[bytes, bytes]] = []
    if if_match is not None:
        headers.append((b"If-Match", _if_match(if_match)))
    if if_none_match:
        headers.append((b"If-None-Match", b"*"))
    return headers


def _entry_from(key: str, answer: _Answer) -> KeyValue:
    """The L{KeyValue} a v1 value read answered with."""
    etag = answer.header(b"etag")
    mod_revision = None
    if etag is not None:
        etag = etag.strip()
        if len(etag) >= 2 and etag[0] == etag[-1] == '"' and etag[1:-1].isdigit():
            mod_revision = int(etag[1:-1])
    staged = (answer.header(b"kv-staged") or "").strip().lower() == "true"
    return KeyValue(
        key=key,
        value=answer.body,
        content_type=answer.header(b"content-type") or DEFAULT_CONTENT_TYPE,
        mod_revision=mod_revision,
        version=answer.int_header(b"kv-version"),
        create_revision=answer.int_header(b"kv-create-revision"),
        expires=answer.header(b"kv-expires"),
        revision=answer.int_header(b"kv-revision"),
        staged=staged,
    )


# -- the v1 keys ---------------------------------------------------------------


def _put_request(
    http: Any,
    target: str,
    value: Any,
    content_type: str,
    ttl: Any,
    if_match: Any,
    if_none_match: bool,
    token: Optional[str],
    expected: Collection[int],
) -> Deferred:
    body = _value_bytes(value)
    return _request(
        http,
        "PUT",
        target + _query(ttl=_ttl(ttl)),
        expected,
        token,
        body,
        content_type=_content_type(content_type),
        extra_headers=_conditions(if_match, if_none_match),
    )


def _put_result(answer: _Answer) -> Dict[str, Any]:
    result = _decode_object(answer.status, answer.body)
    etag = answer.header(b"etag")
    result["etag"] = etag
    revision = result.get("revision")
    result["mod_revision"] = revision if type(revision) is int else None
    result["expires"] = answer.header(b"kv-expires")
    return result


def put(
    http: Any,
    url: str,
    key: str,
    value: bytes,
    *,
    content_type: str = DEFAULT_CONTENT_TYPE,
    ttl: Optional[float] = None,
    if_match: Union[int, str, None] = None,
    if_none_match: bool = False,
    token: Optional[str] = None,
) -> Deferred:
    """
    Write C{value} to C{key} as a one-op commit (C{PUT /v1/kv/{key}}):
    atomic and durable once the Deferred fires.

    @param value: the bytes to store, returned exactly by L{get_entry}.
    @param content_type: stored with the value and returned with it.
    @param ttl: seconds until the key expires (C{?ttl=}); none by default.
    @param if_match: write only if the key's revision is this one (an int,
        or an ETag C{'"5"'} as this function's result gives it), or, with
        C{"*"}, only if the key exists. For compare-and-swap.
    @param if_none_match: write only if the key does not exist (C{If-None-
        Match: *}). For create-only writes such as locks.
    @return: a Deferred firing with the server's C{{"key", "revision",
        "created", "version"}} plus C{"etag"} (the new ETag, C{'"<rev>"'}),
        C{"mod_revision"} (the key's new revision, for the next
        C{if_match}) and C{"expires"} (RFC 3339 text, or L{None}).
    @raise TypeError: at once, if C{value} is not bytes (a str included),
        or an argument has the wrong type.
    @raise ValueError: at once, for an empty key, a bad content type, TTL
        or C{if_match}.
    @raise PreconditionFailedError: (in the Deferred) if C{if_match} or
        C{if_none_match} did not hold; nothing was written.
    @raise KVClientError: (in the Deferred) for other error answers (400 a
        bad key, 413 too large).
    """
    d = _put_request(
        http, _key_url(url, key), value, content_type, ttl, if_match, if_none_match,
        token, {200, 201},
    )
    return d.addCallback(_put_result)


def get_entry(http: Any, url: str, key: str, *, token: Optional[str] = None) -> Deferred:
    """
    Read C{key} with its metadata (C{GET /v1/kv/{key}}). Every key is
    reachable here, including C{set} and C{commit}, and values of any type.

    (Named C{get_entry} because L{get} is the seed's JSON read.)

    @return: a Deferred firing with a L{KeyValue}.
    @raise ValueError: at once, for an empty key.
    @raise NotFoundError: (in the Deferred) if the key does not exist (or
        has expired).
    """
    d = _request(http, "GET", _key_url(url, key), {200}, token, accept=_ACCEPT_ANY)
    return d.addCallback(lambda answer: _entry_from(key, answer))


def remove(
    http: Any,
    url: str,
    key: str,
    *,
    if_match: Union[int, str, None] = None,
    token: Optional[str] = None,
) -> Deferred:
    """
    Delete C{key} as a one-op commit (C{DELETE /v1/kv/{key}}).

    (Named C{remove} because L{delete} is the seed's staged delete.)

    @param if_match: delete only if the key's revision is this one (an int
        or an ETag), or C{"*"}.
    @return: a Deferred firing with C{{"key": key, "deleted": True,
        "revision": <the store's revision after the delete, or None>}}.
    @raise ValueError: at once, for an empty key or a bad C{if_match}.
    @raise NotFoundError: (in the Deferred) if the key does not exist.
    @raise PreconditionFailedError: (in the Deferred) if C{if_match} did not
        hold; nothing was deleted.
    """
    d = _request(
        http, "DELETE", _key_url(url, key), {204}, token,
        extra_headers=_conditions(if_match, False),
    )
    return d.addCallback(
        lambda answer: {"key": key, "deleted": True, "revision": answer.int_header(b"kv-revision")}
    )


# -- listing -------------------------------------------------------------------


def _list_url(
    url: str, prefix: Any, limit: Any, after: Any, values: bool
) -> str:
    if not isinstance(prefix, str):
        raise TypeError("prefix is a str, not %s" % (type(prefix).__name__,))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError("limit is an int, not %s" % (type(limit).__name__,))
        if limit < 1:
            raise ValueError("limit must be 1 or more: %d" % (limit,))
    if after is not None:
        if not isinstance(after, str):
            raise TypeError("after is a str, not %s" % (type(after).__name__,))
        if not after:
            raise ValueError("after is a key: it cannot be empty")
    return _join(url, "v1", "kv", "") + _query(
        prefix=prefix or None,
        limit=None if limit is None else "%d" % (limit,),
        after=after,
        values="1" if values else None,
    )


def _page(answer: _Answer) -> Dict[str, Any]:
    page = _decode_object(answer.status, answer.body)
    items = page.get("items")
    following = page.get("next")
    if not isinstance(items, list) or not (following is None or isinstance(following, str)):
        raise _bad_response(answer.status, "expected a listing {revision, items, next}")
    return page


def list_keys(
    http: Any,
    url: str,
    prefix: str = "",
    *,
    limit: Optional[int] = None,
    after: Optional[str] = None,
    values: bool = False,
    token: Optional[str] = None,
) -> Deferred:
    """
    One page of the keys that start with C{prefix}, in key order
    (C{GET /v1/kv/?prefix=P&limit=N&after=K}), read at one revision.

    @param limit: the page size (the server's default, 100, if L{None}; at
        most its C{max_list_limit}).
    @param after: start after this key (the previous page's C{next}).
    @param values: include each value: C{value} for JSON content types,
        else C{value_base64}.
    @return: a Deferred firing with the server's C{{"revision", "items",
        "next"}}; C{next} is the key to pass as C{after} for the next page,
        or L{None} after the last one. Each item is C{{"key",
        "create_revision", "mod_revision", "version", "content_type",
        "size", "expires"}} (+ the value).
    @raise TypeError, ValueError: at once, for a bad argument.
    @raise KVClientError: (in the Deferred) for an error answer (400 for a
        limit over the server's maximum).
    """
    target = _list_url(url, prefix, limit, after, values)
    return _request(http, "GET", target, {200}, token).addCallback(_page)


def iter_pages(
    http: Any,
    url: str,
    prefix: str = "",
    *,
    limit: Optional[int] = None,
    after: Optional[str] = None,
    values: bool = False,
    token: Optional[str] = None,
) -> AsyncIterator[Dict[str, Any]]:
    """
    Every page of a listing, following C{next}: for C{async for} in a
    coroutine, so a large listing is handled a page at a time.

        async for page in client.iter_pages(treq, url, "jobs/", limit=500):
            for item in page["items"]:
                ...

    Each page is read at its own revision (C{page["revision"]}); keys
    written behind the cursor while it runs are not seen again, keys
    written ahead of it are.

    The arguments are those of L{list_keys}, and are checked at once.

    @raise TypeError, ValueError: at once, for a bad argument.
    @raise KVClientError: (from the iteration) for an error answer, or
        C{bad-response} if the server's C{next} does not move forward.
    """
    _list_url(url, prefix, limit, after, values)  # check the arguments now
    return _iter_pages(http, url, prefix, limit, after, values, token)


async def _iter_pages(
    http: Any,
    url: str,
    prefix: str,
    limit: Optional[int],
    after: Optional[str],
    values: bool,
    token: Optional[str],
) -> AsyncIterator[Dict[str, Any]]:
    while True:
        page = await list_keys(
            http, url, prefix, limit=limit, after=after, values=values, token=token
        )
        yield page
        following = page["next"]
        if following is None:
            return
        if after is not None and following <= after:
            # A server that does not move forward would make this loop forever.
            raise _bad_response(200, "the listing's next (%r) does not move forward" % (following,))
        after = following


def list_all(
    http: Any,
    url: str,
    prefix: str = "",
    *,
    limit: Optional[int] = None,
    after: Optional[str] = None,
    values: bool = False,
    token: Optional[str] = None,
) -> Deferred:
    """
    Every key that starts with C{prefix} (and comes after C{after}, if
    given), reading page after page (of C{limit} keys) through
    L{iter_pages}. The whole listing is held in memory: for a large one,
    use L{iter_pages}.

    @return: a Deferred firing with C{{"revision": <the last page's
        revision>, "items": [every item], "next": None, "pages": <pages
        read>}}, the shape of one page from L{list_keys}.
    @raise TypeError, ValueError: at once, for a bad argument.
    @raise KVClientError: (in the Deferred) for an error answer.
    """
    pages = iter_pages(
        http, url, prefix, limit=limit, after=after, values=values, token=token
    )

    async def collect() -> Dict[str, Any]:
        items: List[Dict[str, Any]] = []
        revision = None
        count = 0
        async for page in pages:
            items.extend(page["items"])
            revision = page.get("revision")
            count += 1
        return {"revision": revision, "items": items, "next": None, "pages": count}

    return Deferred.fromCoroutine(collect())


# -- transactions ----------------------------------------------------------------


class Transaction:
    """
    A transaction that spans several requests (C{/v1/txn/{id}}), opened by
    L{begin}. It sees its own staged writes, is isolated from everybody
    else's, and commits all or nothing: the commit fails with
    L{ConflictError} if another commit changed a key it read or staged
    after it first touched it (first committer wins).

    Each method sends one request and returns a Deferred. Idle
    transactions expire on the server (C{expires_in} seconds after the last
    request); an expired or finished one answers L{NotFoundError}
    C{transaction-not-found}.

    @ivar id: the server's id of the transaction.
    @ivar expires_in: the server's idle timeout in seconds, as it answered.
    @ivar finished: whether it has been committed, refused (409) or
        aborted through this object; it is gone on the server then.
    """

    def __init__(
        self,
        http: Any,
        url: str,
        txn_id: str,
        *,
        expires_in: Optional[float] = None,
        token: Optional[str] = None,
    ) -> None:
        self.http = http
        self.url = url
        self.id = txn_id
        self.expires_in = expires_in
        self.token = token
        self.finished = False

    def __repr__(self) -> str:
        return "<Transaction %s%s>" % (self.id, " finished" if self.finished else "")

    def _url(self, *segments: str) -> str:
        return _join(self.url, "v1", "txn", quote(self.id, safe=""), *segments)

    def put(
        self,
        key: str,
        value: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        ttl: Optional[float] = None,
        if_match: Union[int, str, None] = None,
        if_none_match: bool = False,
    ) -> Deferred:
        """
        Stage a write of C{value} to C{key} (C{PUT /v1/txn/{id}/kv/{key}}),
        as L{put} takes it. C{if_match} and C{if_none_match} are recorded
        and checked at commit (a 409 then, not a 412 now).

        @return: a Deferred firing with C{{"key", "staged": "put",
            "committed": <whether the key exists in the committed store>,
            "ops": <ops staged so far>}}.
        """
        return _put_request(
            self.http, self._url("kv", _segment(key)), value, content_type, ttl, if_match,
            if_none_match, self.token, {200},
        ).addCallback(lambda answer: _decode_object(answer.status, answer.body))

    def delete(self, key: str, *, if_match: Union[int, str, None] = None) -> Deferred:
        """
        Stage a delete of C{key} (C{DELETE /v1/txn/{id}/kv/{key}}).

        @return: a Deferred firing with C{{"key", "staged": "delete", "ops"}}.
        @raise NotFoundError: (in the Deferred) if the key exists neither in
            the committed store nor as a write staged here.
        """
        d = _request(
            self.http, "DELETE", self._url("kv", _segment(key)), {200}, self.token,
            extra_headers=_conditions(if_match, False),
        )
        return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))

    def get(self, key: str) -> Deferred:
        """
        Read C{key} as this transaction sees it (C{GET
        /v1/txn/{id}/kv/{key}}): its staged write, else the committed
        value. The server records the revision read, so the commit fails
        if another commit changes the key meanwhile.

        @return: a Deferred firing with a L{KeyValue} (C{staged} and no
            revisions for a staged write).
        @raise NotFoundError: (in the Deferred) C{key-not-found} if the key
            is absent or its delete is staged here.
        """
        d = _request(
            self.http, "GET", self._url("kv", _segment(key)), {200}, self.token,
            accept=_ACCEPT_ANY,
        )
        return d.addCallback(lambda answer: _entry_from(key, answer))

    def set_many(self, pairs: Mapping[str, Any]) -> Deferred:
        """
        Stage a JSON value for each key of C{pairs} (C{POST
        /v1/txn/{id}/set}, the seed's shape), stored as C{application/json}.

        @return: a Deferred firing with C{{key: "created" | "updated"}}.
        @raise ValueError, TypeError: at once, for values that are not
            strict JSON.
        """
        body = _json_body(dict(pairs))
        d = _request(self.http, "POST", self._url("set"), {200, 201}, self.token, body)
        return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))

    def describe(self) -> Deferred:
        """
        What is staged (C{GET /v1/txn/{id}}).

        @return: a Deferred firing with C{{"id", "ops": [{"op": "put" |
            "delete", "key", ...}], "observed": {key: revision read (0:
            absent)}, "preconditions": [...], "expires_in"}}.
        """
        d = _request(self.http, "GET", self._url(), {200}, self.token)
        return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))

    def commit(self) -> Deferred:
        """
        Apply everything staged, atomically and durably (C{POST
        /v1/txn/{id}/commit}). The transaction is finished afterwards,
        whether it was applied or refused.

        @return: a Deferred firing with C{{"revision", "ops"}}.
        @raise ConflictError: (in the Deferred) naming every conflict;
            nothing was applied.
        @raise KVClientError: (in the Deferred) for other errors; a 503
            leaves the transaction open, to retry.
        """
        d = _request(self.http, "POST", self._url("commit"), {200}, self.token)

        def committed(answer: _Answer) -> Dict[str, Any]:
            self.finished = True
            return _decode_object(answer.status, answer.body)

        def refused(failure: Any) -> Any:
            if failure.check(ConflictError):
                self.finished = True
            return failure

        return d.addCallbacks(committed, refused)

    def abort(self) -> Deferred:
        """
        Drop everything staged (C{DELETE /v1/txn/{id}}).

        @return: a Deferred firing with L{None}.
        @raise NotFoundError: (in the Deferred) if it is already finished or
            has expired.
        """
        d = _request(self.http, "DELETE", self._url(), {204}, self.token)

        def aborted(answer: _Answer) -> None:
            self.finished = True

        return d.addCallback(aborted)


def begin(http: Any, url: str, *, token: Optional[str] = None) -> Deferred:
    """
    Open a transaction (C{POST /v1/txn}). With auth on, it belongs to
    C{token}, and every later request on it must carry the same token.

    @return: a Deferred firing with a L{Transaction}.
    @raise KVClientError: (in the Deferred) for an error answer (429 past
        the server's limit of open transactions).
    """
    d = _request(http, "POST", _join(url, "v1", "txn"), {201}, token)

    def opened(answer: _Answer) -> Transaction:
        document = _decode_object(answer.status, answer.body)
        txn_id = document.get("id")
        if not isinstance(txn_id, str) or not txn_id:
            raise _bad_response(answer.status, "the server gave no transaction id")
        expires_in = document.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
            expires_in = None
        return Transaction(http, url, txn_id, expires_in=expires_in, token=token)

    return d.addCallback(opened)


# -- batch and transact ----------------------------------------------------------


def batch(
    http: Any, url: str, ops: Sequence[Mapping[str, Any]], *, token: Optional[str] = None
) -> Deferred:
    """
    Apply C{ops} as one atomic request (C{POST /v1/batch}). The server
    validates the ops; see L{check_ops} for their shapes:

        {"op": "set", "key": K, "value": <JSON>, "ttl": S?}
        {"op": "set", "key": K, "value_base64": B64, "content_type": CT?, "ttl": S?}
        {"op": "delete", "key": K}
        {"op": "check", "key": K, "revision": N}      (N = 0: absent)
        {"op": "check-absent", "key": K}
        {"op": "get", "key": K}

    @return: a Deferred firing with C{{"revision", "results": [one per
        op]}}: C{set} results say C{created}, C{delete} ones C{deleted},
        checks C{ok}, and C{get} ones C{found} with the entry as a listing
        item with its value.
    @raise TypeError: at once, unless C{ops} is a list or tuple.
    @raise ValueError: at once, if an op holds NaN, Infinity or a lone
        surrogate.
    @raise ConflictError: (in the Deferred) if a check failed (or a key a
        get read kept changing); C{failed} lists the op indexes, nothing
        was applied.
    @raise KVClientError: (in the Deferred) 400 for a malformed op, naming
        its index; 413 past the server's op limit.
    """
    if not isinstance(ops, (list, tuple)):
        raise TypeError("ops is a list, not %s" % (type(ops).__name__,))
    body = _json_body({"ops": list(ops)})
    d = _request(http, "POST", _join(url, "v1", "batch"), {200}, token, body)
    return d.addCallback(lambda answer: _decode_object(answer.status, answer.body))


@dataclass(frozen=True)
class _Op:
    """One checked op of L{transact}."""

    kind: str
    key: str
    value: bytes = b""
    content_type: str = DEFAULT_CONTENT_TYPE
    ttl: Optional[float] = None
    revision: int = 0


def _bad_op(index: int, detail: str) -> ValueError:
    return ValueError("op %d: %s" % (index, detail))


def check_ops(ops: Any) -> List[_Op]:
    """
    Check ops of the L{batch} shapes before anything is sent, as
    L{transact} needs them (the server checks a batch itself). Unknown
    fields are ignored, as the server ignores them.

    @return: the ops, checked (an opaque form, for L{transact}).
    @raise TypeError: unless C{ops} is a list or tuple.
    @raise ValueError: naming the first bad op's index: not an object, an
        unknown C{op}, a missing or empty C{key}, a C{set} without exactly
        one of C{value} and C{value_base64} (or with bad base64), a bad
        C{content_type} or C{ttl}, a C{check} whose C{revision} is not a
        non-negative integer, a value that is not strict JSON.
    """
    if not isinstance(ops, (list, tuple)):
        raise TypeError("ops is a list, not %s" % (type(ops).__name__,))
    checked: List[_Op] = []
    for index, raw in enumerate(ops):
        if not isinstance(raw, Mapping) or raw.get("op") not in OP_KINDS:
            raise _bad_op(index, "each op is an object whose op is one of " + ", ".join(OP_KINDS))
        kind = raw["op"]
        key = raw.get("key")
        if not isinstance(key, str) or not key:
            raise _bad_op(index, "key must be a non-empty string")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_op(index, "the key holds a lone surrogate")
        if kind == "set":
            checked.append(_set_op(index, raw, key))
        elif kind == "check":
            revision = raw.get("revision")
            if type(revision) is not int or revision < 0:
                raise _bad_op(index, "revision must be a non-negative integer")
            checked.append(_Op(kind, key, revision=revision))
        else:
            checked.append(_Op(kind, key))
    return checked


def _set_op(index: int, raw: Mapping[str, Any], key: str) -> _Op:
    has_json = "value" in raw
    has_b64 = "value_base64" in raw
    if has_json == has_b64:
        raise _bad_op(index, "a set takes exactly one of value and value_base64")
    ttl = raw.get("ttl")
    try:
        _ttl(ttl)
    except (TypeError, ValueError) as e:
        raise _bad_op(index, str(e))
    if has_json:
        try:
            value = _json_body(raw["value"])
        except (TypeError, ValueError) as e:
            raise _bad_op(index, "the value is not strict JSON: %s" % (e,))
        return _Op("set", key, value, "application/json", ttl)
    content_type = raw.get("content_type", DEFAULT_CONTENT_TYPE)
    try:
        _content_type(content_type)
    except (TypeError, ValueError) as e:
        raise _bad_op(index, str(e))
    encoded = raw["value_base64"]
    try:
        if not isinstance(encoded, str):
            raise TypeError("not a string")
        value = base64.b64decode(encoded, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _bad_op(index, "value_base64 is not valid base64")
    return _Op("set", key, value, content_type, ttl)


def transact(
    http: Any, url: str, ops: Sequence[Mapping[str, Any]], *, token: Optional[str] = None
) -> Deferred:
    """
    Run C{ops} (the L{batch} shapes) through a multi-request transaction:
    L{begin}, one request per op in order, then commit. Where a L{batch}
    is one request, this is the same work done the way a client that
    interleaves its own logic would do it, and it has no limit but the
    transaction's.

    How each op is staged:

        - C{set}: L{Transaction.put} (a JSON C{value} is sent as
          C{application/json}, a C{value_base64} with its C{content_type}).
        - C{delete}: L{Transaction.delete}. Deleting an absent key is not an
          error (as in a batch): its result says C{"deleted": false}.
        - C{get}: L{Transaction.get}; the result is a batch C{get} result.
        - C{check} / C{check-absent}: the transaction API has no bare
          check, so the key is read through the transaction (which records
          its revision, and makes the commit fail if it changes), and after
          the last op the revisions the server recorded
          (L{Transaction.describe}'s C{observed}: the committed revision when
          the transaction first touched the key) are compared with the
          expected ones. Together that is the batch's meaning: the committed
          revision is the expected one when the commit applies. A check
          that does not hold aborts the transaction and raises
          L{ConflictError}, as a batch's 409 would.

    Any failure aborts the transaction (best effort: an abort that fails
    is ignored, and idle transactions expire on the server anyway), except
    a refused commit (the server has ended it already) and a cancellation
    (nothing more is sent).

    @return: a Deferred firing with C{{"id", "revision", "ops": <ops
        applied>, "results": [one per op, as a batch gives them]}}.
    @raise TypeError, ValueError: at once, for ops that are not the batch
        shapes (see L{check_ops}); nothing is sent.
    @raise ConflictError: (in the Deferred) for a check that did not hold
        (C{problem["detected"] == "client"}, C{failed} names the ops) or a
        commit that conflicted (C{failed} is empty; C{conflicts} name the
        keys); nothing was applied.
    @raise KVClientError: (in the Deferred) for any other error answer;
        nothing was applied.
    """
    checked = check_ops(ops)
    return Deferred.fromCoroutine(_transact(http, url, checked, token))


def _absent(error: NotFoundError) -> bool:
    """Whether a 404 inside a transaction means the key, not the transaction."""
    return error.code == "key-not-found"


async def _transact(
    http: Any, url: str, ops: List[_Op], token: Optional[str]
) -> Dict[str, Any]:
    txn = await begin(http, url, token=token)
    try:
        results = await _stage(txn, ops)
        answer = await txn.commit()
    except CancelledError:
        raise
    except Exception:
        if not txn.finished:
            try:
                await txn.abort()
            except Exception:
                pass  # it expires on the server anyway; the first error matters
        raise
    return {
        "id": txn.id,
        "revision": answer.get("revision"),
        "ops": answer.get("ops"),
        "results": results,
    }


async def _stage(txn: Transaction, ops: List[_Op]) -> List[Dict[str, Any]]:
    """Stage every op in C{txn}, then evaluate the checks; the per-op results."""
    results: List[Dict[str, Any]] = []
    touched = set()
    checks: List[Tuple[int, _Op]] = []
    for index, op in enumerate(ops):
        if op.kind == "set":
            staged = await txn.put(op.key, op.value, content_type=op.content_type, ttl=op.ttl)
            results.append({"op": "set", "key": op.key, "created": not staged.get("committed")})
        elif op.kind == "delete":
            try:
                await txn.delete(op.key)
                deleted = True
            except NotFoundError as e:
                if not _absent(e):
                    raise
                deleted = False
            results.append({"op": "delete", "key": op.key, "deleted": deleted})
        elif op.kind == "get":
            try:
                entry = await txn.get(op.key)
            except NotFoundError as e:
                if not _absent(e):
                    raise
                results.append({"op": "get", "key": op.key, "found": False})
            else:
                results.append({"op": "get", "found": True, **entry.as_item()})
        else:
            if op.key not in touched:
                try:
                    await txn.get(op.key)  # records the revision it reads
                except NotFoundError as e:
                    if not _absent(e):
                        raise
            checks.append((index, op))
            results.append({"op": op.kind, "key": op.key, "ok": True})
        touched.add(op.key)
    if checks:
        observed = (await txn.describe()).get("observed")
        if not isinstance(observed, dict):
            raise _bad_response(200, "the transaction's description has no observed revisions")
        conflicts = []
        for index, op in checks:
            expected = op.revision if op.kind == "check" else 0
            actual = observed.get(op.key)
            if actual != expected:
                conflicts.append(
                    {
                        "key": op.key,
                        "check": "equals" if op.kind == "check" else "absent",
                        "expected": expected,
                        "actual": actual,
                        "tag": index,
                    }
                )
        if conflicts:
            failed = [c["tag"] for c in conflicts]
            raise ConflictError(
                409,
                {
                    "status": 409,
                    "title": "Conflict",
                    "code": "conflict",
                    "detail": "the transaction was aborted: %d check(s) failed on %s"
                    % (len(conflicts), ", ".join(repr(c["key"]) for c in conflicts[:10])),
                    "conflicts": conflicts,
                    "failed": failed,
                    "detected": "client",
                },
            )
    return results


# -- watching --------------------------------------------------------------------

#: The kinds of change event the server sends (SPEC section 5.3).
WATCH_KINDS = ("put", "delete", "expire")

#: The longest line (and the largest frame) an event stream may send before
#: the client takes the server for broken: events carry values of at most
#: 64 KiB (base64 makes that about 87 KiB), so this leaves a wide margin.
MAX_EVENT_BYTES = 4 * 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """
    One message of a C{text/event-stream}, as the WHATWG HTML standard's
    event stream interpretation dispatches it.

    @ivar event: its C{event:} field, or C{"message"} without one.
    @ivar data: its C{data:} lines joined with newlines.
    @ivar id: the last event ID in force when it was dispatched (C{id:}
        fields carry over to later messages until the next one), C{""} if
        none was ever set.
    """

    event: str
    data: str
    id: str


@dataclass(frozen=True)
class SSEComment:
    """A comment line of an event stream (C{: heartbeat}), without the colon."""

    text: str


class EventStreamParser:
    """
    An incremental C{text/event-stream} parser: L{feed} it the body's bytes
    as they arrive, in chunks of any size (a frame, a line, even a UTF-8
    sequence may be split anywhere), and it returns what each chunk
    completed.

    It follows the WHATWG HTML standard's rules: lines end with CRLF, LF or
    CR; a leading byte-order mark is ignored; C{field: value} loses one
    space after the colon; C{data} lines accumulate; C{id} sets the last
    event ID (unless it holds a NUL); C{retry} sets the reconnection time
    if it is all digits; an empty line dispatches the message, unless it
    has no data; other fields are ignored. Comments are returned too,
    because a heartbeat proves the connection (and everything before it)
    arrived.

    @ivar retry: the reconnection time the server asked for, in
        milliseconds, or L{None}.
    @ivar last_event_id: the last event ID of the last dispatched message.
    """

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_bytes = max_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._at_start = True
        # A chunk that ended with CR: the LF of a CRLF may open the next one.
        self._skip_lf = False
        self._event = ""
        self._data: List[str] = []
        self._data_chars = 0
        self._id = ""
        self.last_event_id = ""
        self.retry: Optional[int] = None

    def feed(self, data: bytes) -> List[Union[ServerSentEvent, SSEComment]]:
        """
        Parse the next bytes of the stream.

        @return: the messages and comments they completed, in order.
        @raise ValueError: if a line or a message grows beyond
            C{max_bytes} (a broken or hostile server; nothing more should
            be read).
        """
        text = self._decoder.decode(data)
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        buffer = self._buffer + text
        out: List[Union[ServerSentEvent, SSEComment]] = []
        position = 0
        for match in _LINE_END.finditer(buffer):
            self._line(buffer[position : match.start()], out)
            position = match.end()
        self._skip_lf = position == len(buffer) and buffer.endswith("\r")
        self._buffer = buffer[position:]
        if len(self._buffer) > self._max_bytes:
            raise ValueError(
                "an event stream line is longer than %d characters" % (self._max_bytes,)
            )
        return out

    def _line(self, line: str, out: List[Union[ServerSentEvent, SSEComment]]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line.startswith(":"):
            out.append(SSEComment(line[1:].lstrip(" ")))
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
            if self._data_chars > self._max_bytes:
                raise ValueError("an event is larger than %d characters" % (self._max_bytes,))
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        elif field == "retry":
            if value.isdigit() and value.isascii():
                self.retry = int(value)

    def _dispatch(self, out: List[Union[ServerSentEvent, SSEComment]]) -> None:
        self.last_event_id = self._id
        if self._data:
            out.append(ServerSentEvent(self._event or "message", "\n".join(self._data), self._id))
        self._event = ""
        self._data = []
        self._data_chars = 0


@dataclass(frozen=True)
class WatchEvent:
    """
    One changed key, as L{watch} yields it.

    @ivar revision: the revision of the commit that changed it (the SSE
        C{id}); every event of one commit has the same revision.
    @ivar kind: C{"put"}, C{"delete"} or C{"expire"} (removed by the TTL
        sweeper).
    @ivar key: the key.
    @ivar data: the event's whole JSON C{data}: C{key}, C{revision}, and
        for a put C{version}, C{content_type}, C{size}, and with
        C{values=True} C{value} (JSON content types) or C{value_base64}
        (values over 64 KiB are left out).
    """

    revision: int
    kind: str
    key: str
    data: Dict[str, Any]

    @property
    def version(self) -> Optional[int]:
        """The key's version after a put; L{None} for deletes and expiries."""
        version = self.data.get("version")
        return version if type(version) is int else None

    def as_item(self) -> Dict[str, Any]:
        """The event as one JSON object: C{revision}, C{kind}, C{key}, then the rest of C{data}."""
        item: Dict[str, Any] = {"revision": self.revision, "kind": self.kind, "key": self.key}
        for name, value in self.data.items():
            item.setdefault(name, value)
        return item


class HistoryGone(KVClientError):
    """
    A 410 from C{/v1/watch}: the events after the resume point have left
    the server's bounded history (or the server restarted since), so some
    changes can no longer be replayed. Read the state again (L{list_all})
    and watch from the revision that listing was read at.
    """

    @property
    def oldest_revision(self) -> Optional[int]:
        """The oldest revision the server can resume from, if it said."""
        revision = self.problem.get("oldest_revision")
        return revision if type(revision) is int else None

    @property
    def requested_revision(self) -> Optional[int]:
        """The resume point that was refused, if the server said."""
        revision = self.problem.get("requested_revision")
        return revision if type(revision) is int else None


def _watch_event(message: ServerSentEvent) -> Optional[WatchEvent]:
    """
    The L{WatchEvent} of one message, or L{None} for a message of another
    type (a later server may send more; they are skipped).

    @raise KVClientError: C{bad-response} for a change event that is not a
        JSON object with a key and a revision.
    """
    if message.event not in WATCH_KINDS:
        return None
    try:
        data = json.loads(message.data)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        raise _bad_response(200, "an event's data is not a JSON object with a key: %r"
                            % (_one_line(message.data),))
    revision = data.get("revision")
    if message.id.isdigit() and message.id.isascii():
        if revision is not None and revision != int(message.id):
            raise _bad_response(200, "an event's id (%s) is not its revision (%r)"
                                % (message.id, revision))
        revision = int(message.id)
    if type(revision) is not int or revision < 0:
        raise _bad_response(200, "an event has no revision")
    return WatchEvent(revision, message.event, data["key"], data)


#: Answers to a stream request that are worth asking again later.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: Failures of a stream that a reconnection may cure.
_RETRY_ERRORS = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionDone,
    error.TimeoutError,
    TimeoutError,
    ResponseFailed,  # includes ResponseNeverReceived
    RequestTransmissionFailed,
)


class _StreamProtocol(Protocol):
    """
    Receives one event stream's body for a L{Watch}. (treq's C{collect}
    does the same job but keeps the transport to itself, and a watch needs
    it: to close the stream, and to pause it while the consumer catches
    up.)
    """

    def __init__(self, watch: "Watch", finished: Deferred) -> None:
        self._watch = watch
        self._finished = finished
        self._failure: Optional[Failure] = None

    def connectionMade(self) -> None:
        self._watch._attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            self._watch._received(data)
        except Exception:
            # Nothing more of this stream can be trusted.
            self._failure = Failure()
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._watch._detach()
        if self._failure is not None:
            self._finished.errback(self._failure)
        elif self._watch._timed_out:
            self._finished.errback(error.TimeoutError("no data on the event stream"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(None)
        else:
            self._finished.errback(reason)


class _Discard(Protocol):
    """Closes a response body unread; C{closed} fires once it is gone."""

    def __init__(self, closed: Deferred) -> None:
        self._closed = closed

    def connectionMade(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed.callback(None)


class Watch:
    """
    The changes to keys under a prefix, from C{GET /v1/watch} (Server-Sent
    Events), as an async iterator of L{WatchEvent}; L{watch} opens one.

        async with client.watch(treq, url, "jobs/") as events:
            async for event in events:
                print(event.revision, event.kind, event.key)

    (C{async for} over Deferreds: run it in a coroutine wrapped with
    C{Deferred.fromCoroutine}, or under C{task.react}.)

    The stream opens when L{watch} is called, and events are queued from
    then on, so changes made after L{when_open} fires are never missed
    even before iterating starts. It yields each change once, in revision
    order, and the events of one commit one after another.

    B{Resuming.} When the connection drops (or sends nothing, heartbeats
    included, for C{idle_timeout} seconds), it reconnects with
    C{Last-Event-ID}, and the server replays what was missed from its
    history: no event is lost and none is yielded twice. A resume point is
    the last revision whose events are known to be complete; the events of
    one commit travel in one write, but a connection can break inside it,
    so until a heartbeat (or a later commit) proves the last commit whole,
    the watch resumes from the revision before it and drops the replayed
    events it already yielded. With neither C{after} nor an event yet, it
    resumes from the C{KV-Revision} the first stream opened at.

    B{Backoff.} The first reconnection after a stream that delivered
    something is immediate; each further attempt without progress waits
    twice as long as the one before (from C{retry_delay}, else the
    server's C{retry:} hint, else 1 s; at most C{max_delay}), scaled by a
    random factor in [0.5, 1] so clients cut off together do not come back
    together. Attempts that do not even open a stream (refused
    connections, 429 and 5xx answers) count towards C{max_retries}; past
    it the last error is raised from the iteration.

    B{Errors} (raised from the iteration, after every event received
    before them): L{HistoryGone} (410) when the resume point has left the
    server's history; L{KVClientError} for other refusals (401, 403, 400)
    and for a stream that is not a kvcache event stream (C{bad-response});
    the connection error that exhausted C{max_retries}; or, with
    C{reconnect=False}, the first failure (a clean end of the stream just
    ends the iteration then).

    B{Flow control.} When more than C{max_buffer} events wait to be
    consumed, the connection is paused until half of them are; a server
    whose buffer for the watch then overflows cuts it off, and the watch
    resumes where it was.

    One consumer at a time. L{close} (or leaving the C{async with})
    releases the connection; always do it, or the connection stays open.

    @ivar last_revision: the revision events are known up to: the last
        event's, else C{after}, else the revision the stream opened at.
    @ivar reconnects: how many times it reconnected.
    @ivar retry: the server's reconnection hint in seconds, if it sent one.
    """

    def __init__(
        self,
        http: Any,
        target: str,
        headers: Headers,
        after: Optional[int],
        reconnect: bool,
        clock: IReactorTime,
        retry_delay: Optional[float],
        max_delay: float,
        max_retries: Optional[int],
        idle_timeout: Optional[float],
        max_buffer: int,
        random: Callable[[], float],
        on_retry: Optional[Callable[[Optional[Failure], float], None]],
    ) -> None:
        self._http = http
        self._target = target
        self._headers = headers
        self._reconnect = reconnect
        self._clock = clock
        self._retry_delay = retry_delay
        self._max_delay = max_delay
        self._max_retries = max_retries
        self._idle_timeout = idle_timeout
        self._max_buffer = max_buffer
        self._random = random
        self._on_retry = on_retry
        self.last_revision: Optional[int] = after
        self.reconnects = 0
        self.retry: Optional[float] = None
        # The keys of last_revision already yielded, and whether that commit
        # is known to have arrived whole (see the class docstring).
        self._keys_at_last: Set[str] = set()
        self._complete = True
        self._events: Deque[WatchEvent] = deque()
        self._wakeup: Optional[Deferred] = None
        self._open_waiters: List[Deferred] = []
        self._close_waiters: List[Deferred] = []
        self._open = False
        self._closed = False
        self._done = False
        self._failure: Optional[Failure] = None
        self._request: Optional[Deferred] = None
        self._sleep: Optional[Deferred] = None
        self._transport: Any = None
        self._paused = False
        self._idle: Optional[IDelayedCall] = None
        self._timed_out = False
        self._progress = False
        self._stream_opened = False
        self._opened_at: Optional[int] = after
        self._parser = EventStreamParser()
        Deferred.fromCoroutine(self._run()).addBoth(self._ended)

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._done:
            state = "done"
        else:
            state = "open" if self._open else "connecting"
        return "<Watch %s %s after %s>" % (self._target, state, self.last_revision)

    # -- the consumer's side ---------------------------------------------------

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> WatchEvent:
        if self._wakeup is not None:
            raise RuntimeError("a Watch has one consumer at a time")
        while True:
            if self._events:
                event = self._events.popleft()
                if self._paused and len(self._events) <= self._max_buffer // 2:
                    self._unpause()
                return event
            if self._failure is not None:
                failure, self._failure = self._failure, None
                failure.raiseException()
            if self._done or self._closed:
                raise StopAsyncIteration
            self._wakeup = Deferred()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    async def __aenter__(self) -> "Watch":
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        await self.close()
        return False

    def when_open(self) -> Deferred:
        """
        A Deferred firing once a stream is open (at once if one is), with
        the store's revision when it opened (C{KV-Revision}): every change
        after it will be yielded. It fails with the watch's error if the
        watch ends first (C{CancelledError} if it was closed).
        """
        if self._open:
            return succeed(self._opened_at)
        d: Deferred = Deferred()
        if self._done:
            d.errback(self._end_failure())
        else:
            self._open_waiters.append(d)
        return d

    def close(self) -> Deferred:
        """
        Stop watching: drop the connection (or the reconnection under way)
        and end the iteration; events not yet consumed are discarded.

        @return: a Deferred firing with L{None} once the connection is
            closed.
        """
        if not self._closed and not self._done:
            self._closed = True
            self._events.clear()
            self._cancel_idle()
            if self._sleep is not None:
                self._sleep.cancel()
            if self._request is not None:
                self._request.cancel()
            if self._transport is not None:
                self._transport.loseConnection()
        self._closed = True
        self._wake()
        d: Deferred = Deferred()
        if self._done:
            d.callback(None)
        else:
            self._close_waiters.append(d)
        return d

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.called:
            self._wakeup.callback(None)

    def _end_failure(self) -> Failure:
        if self._failure is not None:
            return self._failure
        if self._closed:
            return Failure(CancelledError("the watch was closed"))
        return Failure(error.ConnectionDone("the event stream ended"))

    def _ended(self, result: Any) -> None:
        """The connection loop is over: for good, failed, or closed."""
        self._done = True
        self._open = False
        self._cancel_idle()
        if isinstance(result, Failure) and not self._closed:
            self._failure = result
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.errback(self._end_failure())
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)
        self._wake()

    # -- the connection loop ---------------------------------------------------

    def _resume_point(self) -> Optional[int]:
        if self.last_revision is None:
            return None
        if self._complete:
            return self.last_revision
        # The last commit may have arrived in part: ask for it again, and
        # _accept drops the keys already yielded.
        return max(0, self.last_revision - 1)

    def _delay(self, failures: int) -> float:
        if failures == 0:
            return 0.0
        base = self._retry_delay
        if base is None:
            base = self.retry if self.retry is not None else 1.0
        delay = min(self._max_delay, base * 2 ** min(failures - 1, 32))
        return delay * (0.5 + 0.5 * self._random())

    async def _run(self) -> None:
        failures = 0  # attempts since the last progress: the backoff
        refusals = 0  # attempts that opened no stream: for max_retries
        while True:
            self._progress = False
            self._stream_opened = False
            error_: Optional[Failure] = None
            try:
                try:
                    await self._stream_once()
                finally:
                    self._cancel_idle()
            except CancelledError:
                if self._closed:
                    return
                if not self._timed_out:
                    raise
                error_ = Failure(error.TimeoutError("no answer from the event stream"))
            except Exception as e:
                if self._closed:
                    return
                if not self._retryable(e):
                    raise
                error_ = Failure()
            if self._closed:
                return
            if not self._reconnect:
                if error_ is not None:
                    error_.raiseException()
                return
            failures = 0 if self._progress else failures + 1
            refusals = 0 if self._stream_opened else refusals + 1
            if self._max_retries is not None and refusals > self._max_retries:
                assert error_ is not None
                error_.raiseException()
            delay = self._delay(failures)
            if self._on_retry is not None:
                self._on_retry(error_, delay)
            if delay > 0:
                self._sleep = deferLater(self._clock, delay, lambda: None)
                try:
                    await self._sleep
                except CancelledError:
                    return
                finally:
                    self._sleep = None
            if self._closed:
                return
            self.reconnects += 1

    @staticmethod
    def _retryable(e: Exception) -> bool:
        if isinstance(e, HistoryGone):
            return False
        if isinstance(e, KVClientError):
            return e.status in _RETRY_STATUSES
        return isinstance(e, _RETRY_ERRORS)

    async def _stream_once(self) -> None:
        """
        One connection: open the stream and read it until it ends (cleanly:
        the server finished it). Sets C{_stream_opened} once the server
        accepted it.

        @raise: L{HistoryGone}, L{KVClientError} for a refusal, or the
            connection's failure.
        """
        headers = self._headers.copy()
        resume = self._resume_point()
        if resume is not None:
            headers.setRawHeaders(b"Last-Event-ID", [b"%d" % (resume,)])
        self._timed_out = False
        self._arm_idle()
        try:
            self._request = self._http.request(
                "GET", self._target, headers=headers, unbuffered=True
            )
            response = await self._request
        finally:
            self._request = None
        media = (response.headers.getRawHeaders(b"content-type") or [b""])[-1]
        media = media.split(b";", 1)[0].strip().lower()
        if response.code == 200 and media != b"text/event-stream":
            # Not ours (a proxy's page, say): close it unread.
            closed: Deferred = Deferred()
            response.deliverBody(_Discard(closed))
            await closed
            raise _bad_response(200, "the server did not answer with an event stream")
        if response.code != 200:
            # Read the problem under the idle timer too (and cancellable).
            self._request = treq.content(response)
            try:
                body = await self._request
            finally:
                self._request = None
                self._cancel_idle()
            if response.code == 410:
                raise HistoryGone(410, _problem_from_body(410, body))
            raise _error(response.code, body)
        revisions = response.headers.getRawHeaders(b"kv-revision") or [b""]
        opened_at: Optional[int] = int(revisions[-1]) if revisions[-1].strip().isdigit() else None
        if self.last_revision is None and opened_at is not None:
            self.last_revision = opened_at
            self._complete = True
        self._opened_at = opened_at if opened_at is not None else self.last_revision
        self._parser = EventStreamParser()
        finished: Deferred = Deferred()
        response.deliverBody(_StreamProtocol(self, finished))
        self._stream_opened = True
        self._open = True
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(self._opened_at)
        try:
            await finished
        finally:
            self._open = False
            self._cancel_idle()

    # -- the stream's side -----------------------------------------------------

    def _attach(self, transport: Any) -> None:
        self._transport = transport
        self._paused = False
        if self._closed:
            transport.loseConnection()

    def _detach(self) -> None:
        self._transport = None
        self._paused = False

    def _received(self, data: bytes) -> None:
        """Bytes of the stream: parse them and queue the new events."""
        self._arm_idle()
        try:
            messages = self._parser.feed(data)
        except ValueError as e:
            raise _bad_response(200, str(e))
        if self._parser.retry is not None:
            self.retry = self._parser.retry / 1000.0
        queued = False
        for message in messages:
            if isinstance(message, SSEComment):
                # A heartbeat is a write of its own: everything before it,
                # the last commit included, has arrived whole.
                self._complete = True
                self._progress = True
                continue
            event = _watch_event(message)
            if event is None:
                continue
            self._progress = True
            if self._accept(event):
                self._events.append(event)
                queued = True
        if queued:
            self._wake()
        backlog = len(self._events) > self._max_buffer
        if backlog and not self._paused and self._transport is not None:
            self._paused = True
            self._cancel_idle()
            self._transport.pauseProducing()

    def _accept(self, event: WatchEvent) -> bool:
        """Whether C{event} is new (not replayed after a resume); track it."""
        last = self.last_revision
        if last is not None and event.revision < last:
            return False
        if last is not None and event.revision == last:
            if self._complete or event.key in self._keys_at_last:
                return False
            self._keys_at_last.add(event.key)
            return True
        self.last_revision = event.revision
        self._keys_at_last = {event.key}
        self._complete = False
        return True

    def _unpause(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._arm_idle()
            self._transport.resumeProducing()

    def _arm_idle(self) -> None:
        """(Re)start the idle timer: it fires if nothing arrives for a while."""
        # Paused, silence is ours, not the server's.
        if self._idle_timeout is None or self._closed or self._paused:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._clock.callLater(self._idle_timeout, self._idled)

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idled(self) -> None:
        self._idle = None
        self._timed_out = True
        if self._request is not None:
            self._request.cancel()
        elif self._transport is not None:
            self._transport.loseConnection()


def _seconds(value: Any, name: str, allow_none: bool = True) -> Optional[float]:
    """
    @raise TypeError: unless C{value} is an int or float (or L{None}).
    @raise ValueError: unless it is 0 or more and finite.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s is a number of seconds, not %s" % (name, type(value).__name__))
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("%s must be 0 or more seconds and finite: %r" % (name, value))
    return float(value)


def _revision(value: Any, name: str) -> int:
    """
    @raise TypeError: unless C{value} is an int (not a bool).
    @raise ValueError: if it is negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s is a revision (an int), not %s" % (name, type(value).__name__))
    if value < 0:
        raise ValueError("%s must not be negative: %d" % (name, value))
    return value


def watch(
    http: Any,
    url: str,
    prefix: str = "",
    *,
    after: Optional[int] = None,
    values: bool = False,
    token: Optional[str] = None,
    reconnect: bool = True,
    clock: Optional[IReactorTime] = None,
    retry_delay: Optional[float] = None,
    max_delay: float = 30.0,
    max_retries: Optional[int] = 8,
    idle_timeout: Optional[float] = 60.0,
    max_buffer: int = 10_000,
    random: Callable[[], float] = _random.random,
    on_retry: Optional[Callable[[Optional[Failure], float], None]] = None,
) -> Watch:
    """
    Watch the keys that start with C{prefix} (C{GET /v1/watch?prefix=P}):
    a L{Watch}, an async iterator of L{WatchEvent}s that resumes by itself
    after a disconnect. See L{Watch} for the guarantees, backoff and
    errors.

    @param after: yield the changes after this revision (replayed from the
        server's history, then live); by default only those after the
        stream opens.
    @param values: include small values in the events (C{values=1}).
    @param reconnect: resume after a disconnect; with C{False} the first
        disconnect ends the iteration (a failure is raised).
    @param clock: the L{IReactorTime} for backoff and idle timers (the
        global reactor by default).
    @param retry_delay: the first backoff delay in seconds (default: the
        server's C{retry:} hint, else 1 s).
    @param max_delay: the longest backoff delay.
    @param max_retries: attempts in a row that may fail to open a stream
        before the watch gives up (L{None}: never).
    @param idle_timeout: seconds without a byte (heartbeats included)
        after which the connection is taken as dead and reopened; keep it
        above the server's heartbeat interval (15 s by default). L{None}
        disables it.
    @param max_buffer: events queued for the consumer before the
        connection is paused.
    @param random: a source of floats in [0, 1) for the backoff's jitter.
    @param on_retry: called before each reconnection with the L{Failure}
        that ended the last attempt (L{None} if the server ended the stream
        cleanly) and the seconds until the next one: to log it. An
        exception it raises ends the watch.
    @return: a L{Watch}, already connecting.
    @raise TypeError, ValueError: at once, for a bad argument or token.
    """
    if not isinstance(prefix, str):
        raise TypeError("prefix is a str, not %s" % (type(prefix).__name__,))
    if after is not None:
        _revision(after, "after")
    _seconds(retry_delay, "retry_delay")
    if not _seconds(max_delay, "max_delay", allow_none=False):
        raise ValueError("max_delay must be above 0 seconds")
    if max_retries is not None:
        _revision(max_retries, "max_retries")
    if idle_timeout is not None and not _seconds(idle_timeout, "idle_timeout"):
        raise ValueError("idle_timeout must be above 0 seconds")
    if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
        raise ValueError("max_buffer must be an int of 1 or more: %r" % (max_buffer,))
    target = _join(url, "v1", "watch") + _query(
        prefix=prefix or None, values="1" if values else None
    )
    headers = _headers(token, accept=b"text/event-stream")
    if clock is None:
        from twisted.internet import reactor as clock  # type: ignore[no-redef]
    return Watch(
        http, target, headers, after, reconnect, clock, retry_delay, max_delay, max_retries,
        idle_timeout, max_buffer, random, on_retry,
    )


def wait_for(
    http: Any,
    url: str,
    key: str,
    index: int,
    *,
    wait: Optional[float] = None,
    token: Optional[str] = None,
) -> Deferred:
    """
    One long-poll (C{GET /v1/kv/{key}?index=N&wait=S}): wait until C{key}
    changes after revision C{index} (written, deleted or expired), or
    until the wait ends, and read it then.

    The answer is at once if the key's C{mod_revision} is already above
    C{index}, or if it was deleted or expired after C{index}. A missing key
    wakes only when it appears. At the end of the wait the unchanged state
    comes back: compare the entry's C{mod_revision} with C{index} to tell.
    To wait again, pass the entry's C{mod_revision} as the next C{index}.
    (After L{None} for a key deleted after C{index}, the same C{index}
    answers at once again: wait from a later revision, or use L{watch}.)

    @param index: a revision (0: wait for the key to exist).
    @param wait: seconds to hold at most (the server's default, 60, when
        L{None}; capped by its C{max_wait}, stretched by up to 1/16 as
        jitter).
    @return: a Deferred firing with the L{KeyValue}, or L{None} if the key
        does not exist (then).
    @raise TypeError, ValueError: at once, for a bad key, index or wait.
    @raise KVClientError: (in the Deferred) for an error answer (429 when
        the server's watcher limit is reached).
    """
    index = _revision(index, "index")
    seconds = _seconds(wait, "wait")
    wait_text = None
    if seconds is not None:
        wait_text = "%d" % (seconds,) if seconds.is_integer() else repr(seconds)
    target = _key_url(url, key) + _query(index="%d" % (index,), wait=wait_text)
    d = _request(http, "GET", target, {200, 404}, token, accept=_ACCEPT_ANY)

    def answered(answer: _Answer) -> Optional[KeyValue]:
        if answer.status == 404:
            problem = _problem_from_body(404, answer.body)
            if problem.get("code") != "key-not-found":
                raise NotFoundError(404, problem)
            return None
        return _entry_from(key, answer)

    return d.addCallback(answered)
