"""
Script kvcache from Twisted code with treq.

Every function takes the HTTP client first: the C{treq} module itself, a
L{treq.client.HTTPClient}, or a L{treq.testing.StubTreq} in tests (anything
with treq's C{request(method, url, **kwargs)}). Then comes the server's base
URL (C{"http://127.0.0.1:8080"}; a path prefix such as
C{"https://host/kv"} is kept), then the operation's arguments. Each returns
a L{Deferred}.

    from twisted.internet.task import react
    import treq
    from kvtwist import client

    async def main(reactor):
        url = "http://127.0.0.1:8080"
        await client.set_many(treq, url, {"flags/beta": True})
        await client.commit(treq, url)
        print(await client.get(treq, url, "flags/beta"))

    react(main)

The seed routes (SPEC section 4) used here:

    - L{get}: C{GET /{key}}, the committed JSON value.
    - L{set_many}: C{POST /set}, stage writes in the server's shared queue.
    - L{delete}: C{DELETE /set}, stage deletes in the shared queue.
    - L{commit}: C{POST /commit}, apply the shared queue atomically and
      durably.

Staged writes live in one queue shared by every client until somebody
commits; see the README. Every function accepts C{token=...} (sent as
C{Authorization: Bearer <token>}) for servers with auth turned on.

Errors: an answer the server gives as an error fails the Deferred with
L{KVClientError} (L{NotFoundError} for 404), carrying the status and the
problem+json document. Arguments this module can tell are wrong before
sending anything (an empty key, a value that is not JSON) raise
C{ValueError} or C{TypeError} at once. Connection failures arrive as
Twisted's own errors (C{ConnectError}, C{ResponseFailed}, ...), unchanged.

New routes (the v1 API: put, list, transactions, batch, watch) are added
in the same shape: a public C{name(http, url, ..., token=None)} that checks
its arguments at once, sends with L{_send} and decodes the answer in a
callback, with a docstring giving the result and the errors.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Collection, Dict, Mapping, Optional, Tuple
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

__all__ = [
    "KVClientError",
    "NotFoundError",
    "get",
    "set_many",
    "delete",
    "commit",
]

JSON_CONTENT_TYPE = b"application/json"
#: How much of a non-JSON error body is quoted in an error message.
_SNIPPET_CHARS = 200


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
    in C{problem["missing"]}), or the URL is not a kvcache route
    (C{"not-found"}).
    """

    @property
    def missing(self) -> list:
        """The keys the server named as missing (empty if it named none)."""
        missing = self.problem.get("missing")
        return list(missing) if isinstance(missing, list) else []


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
    cls = NotFoundError if status == 404 else KVClientError
    return cls(status, problem)


def _segment(key: str) -> str:
    """
    C{key} as one percent-encoded path segment: C{/}, spaces, C{%}, C{?}
    and non-ASCII are all escaped, and the dot segments C{.} and C{..}
    (which URL normalisation in proxies and some clients would remove) are
    spelled C{%2E}.

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


def _headers(token: Optional[str], content_type: Optional[bytes] = None) -> Headers:
    """
    The request headers, all as bytes: Twisted caches header names in one
    dict for both types, and a str name next to its bytes twin there is a
    BytesWarning under C{python -b}.

    @raise ValueError: for a token that cannot be a header value.
    """
    headers = Headers({b"Accept": [b"application/json, application/problem+json"]})
    if content_type is not None:
        headers.setRawHeaders(b"Content-Type", [content_type])
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


async def _exchange(
    http: Any,
    method: str,
    url: str,
    expected: Collection[int],
    headers: Headers,
    body: Optional[bytes],
) -> Tuple[int, bytes]:
    kwargs: Dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["data"] = body
    response = await http.request(method, url, **kwargs)
    # Read the body even for errors: it holds the problem document, and an
    # unread body would keep the connection busy.
    content = await treq.content(response)
    if response.code not in expected:
        raise _error(response.code, content)
    return response.code, content


def _send(
    http: Any,
    method: str,
    url: str,
    expected: Collection[int],
    token: Optional[str],
    body: Optional[bytes] = None,
) -> Deferred:
    """
    Send one request and read the whole answer. Builds the headers first,
    so a bad token raises at once, before any I/O.

    @return: a Deferred firing with C{(status, body)} if the status is in
        C{expected}.
    @raise ValueError: at once, for a token that cannot be a header value.
    @raise KVClientError: (in the Deferred) for any other status
        (L{NotFoundError} for 404).
    """
    headers = _headers(token, JSON_CONTENT_TYPE if body is not None else None)
    return Deferred.fromCoroutine(_exchange(http, method, url, expected, headers, body))


def _decode_json(status: int, body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        raise KVClientError(
            status,
            {
                "status": status,
                "detail": "the server's answer is not JSON: "
                + repr(_one_line(body.decode("utf-8", "replace"))),
                "code": "bad-response",
            },
        )


def _decode_object(status: int, body: bytes) -> Dict[str, str]:
    document = _decode_json(status, body)
    if not isinstance(document, dict):
        raise KVClientError(
            status,
            {
                "status": status,
                "detail": "expected a JSON object from the server",
                "code": "bad-response",
            },
        )
    return document


def get(http: Any, url: str, key: str, *, token: Optional[str] = None) -> Deferred:
    """
    Read the committed value of C{key} (C{GET /{key}}); staged writes are
    not visible.

    Keys named like a seed operation (C{set}, C{commit}) are not reachable
    on this route: the server answers 404 for them.

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
    nothing is staged.

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
