# -*- test-case-name: tests.unit.test_client_wire -*-
"""
The HTTP plumbing every call shares: URLs with percent-encoded keys,
request headers and JSON bodies, sending through any treq-like client,
whole answers (L{_Answer}) and their decoding; and L{KeyValue}, what a v1
read returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Collection, Dict, Iterable, Optional, Tuple
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from kvtwist import __version__
from kvtwist.client.errors import _bad_response, _error, _one_line
from kvtwist.wire import DEFAULT_CONTENT_TYPE as DEFAULT_CONTENT_TYPE
from kvtwist.wire import decode_base64, encode_json, etag, is_json_type
from kvtwist.wire import value_fields as value_fields

JSON_CONTENT_TYPE = b"application/json"
#: The Accept header of requests answered with JSON (or a problem).
_ACCEPT_JSON = b"application/json, application/problem+json"
#: The Accept header of value reads: the value comes back as it was stored.
_ACCEPT_ANY = b"*/*"
#: Sent with every request, so a server's access log tells kvtwist's
#: clients (and their version) from the rest.
USER_AGENT = ("kvtwist/%s" % (__version__,)).encode("ascii")


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
        return None if self.mod_revision is None else etag(self.mod_revision)

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


def decode_value_base64(encoded: Any) -> bytes:
    """
    The bytes of a C{value_base64} field (strict base64, as the server
    checks it): the way back from L{value_fields}.

    @raise ValueError: if C{encoded} is not a string of valid base64.
    """
    return decode_base64(encoded)


def text_of(value: bytes, content_type: str) -> Optional[str]:
    """
    The value as text, when it is text; else L{None} (show it as bytes or
    base64). The rule the C{kvtwist} command prints values by:

        - a C{charset} parameter names the encoding (C{text/plain;
          charset=latin-1}); without one, UTF-8;
        - C{text/*} and JSON types (L{is_json_type}) are text when their
          bytes decode;
        - any other type (C{application/octet-stream}, the default, as
          C{kvtwist put app/x hello} stores) is text when its bytes decode
          as UTF-8 and hold no control character but tab, newline and
          carriage return, so a binary value is never mistaken for text.
    """
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    charset = "utf-8"
    for parameter in parameters.split(";"):
        name, _, setting = parameter.partition("=")
        if name.strip().lower() == "charset" and setting.strip():
            charset = setting.strip().strip('"')
    try:
        text = value.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None
    if media.startswith("text/") or is_json_type(media):
        return text
    if any(ord(c) < 0x20 and c not in "\t\n\r" or ord(c) == 0x7F for c in text):
        return None
    return text


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
    The request headers (C{User-Agent: kvtwist/VERSION} among them), all
    as bytes: Twisted caches header names in one
    dict for both types, and a str name next to its bytes twin there is a
    BytesWarning under C{python -b}.

    @raise ValueError: for a token that cannot be a header value.
    """
    headers = Headers({b"Accept": [accept], b"User-Agent": [USER_AGENT]})
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
    return encode_json(document)


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
