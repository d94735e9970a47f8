# -*- test-case-name: tests.unit.test_client_kv -*-
"""
The v1 key routes (docs/api.md): one key at a time (L{put},
L{get_entry}, L{remove}) and listings (L{list_keys}, L{iter_pages},
L{list_all}); and the argument checks they share with transactions.
"""

from __future__ import annotations

import math
from typing import Any, AsyncIterator, Collection, Dict, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred

from kvtwist.client._wire import (
    _ACCEPT_ANY,
    _Answer,
    _decode_object,
    DEFAULT_CONTENT_TYPE,
    _join,
    _key_url,
    KeyValue,
    _query,
    _request,
)
from kvtwist.client.errors import _bad_response
from kvtwist.wire import etag, etag_revision, valid_content_type


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
    @raise ValueError: unless the server would keep it
        (L{kvtwist.wire.valid_content_type}: non-empty printable ASCII, what a
        header value can carry, at most 255 characters).
    """
    if not isinstance(content_type, str):
        raise TypeError("content_type is a str, not %s" % (type(content_type).__name__,))
    if not valid_content_type(content_type):
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


def _lease(lease: Any) -> Optional[str]:
    """
    C{lease} as the C{?lease=} text, or L{None}.

    @raise TypeError: unless it is an int (not a bool).
    @raise ValueError: unless it is positive.
    """
    if lease is None:
        return None
    if type(lease) is not int:
        raise TypeError("lease is an int id, not %s" % (type(lease).__name__,))
    if lease <= 0:
        raise ValueError("lease ids are positive: %r" % (lease,))
    return "%d" % (lease,)


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
        return etag(if_match).encode("ascii")
    if if_match == "*":
        return b"*"
    digits = if_match
    if len(digits) >= 2 and digits[0] == digits[-1] == '"':
        digits = digits[1:-1]
    if not (digits.isdigit() and digits.isascii()):
        raise ValueError('if_match is a revision, an ETag ("5") or "*": %r' % (if_match,))
    return etag(int(digits)).encode("ascii")


def _conditions(if_match: Any, if_none_match: bool) -> List[Tuple[bytes, bytes]]:
    headers: List[Tuple[bytes, bytes]] = []
    if if_match is not None:
        headers.append((b"If-Match", _if_match(if_match)))
    if if_none_match:
        headers.append((b"If-None-Match", b"*"))
    return headers


def _entry_from(key: str, answer: _Answer) -> KeyValue:
    """The L{KeyValue} a v1 value read answered with."""
    tag = answer.header(b"etag")
    mod_revision = etag_revision(tag) if tag is not None else None
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
    lease: Optional[int] = None,
) -> Deferred:
    body = _value_bytes(value)
    return _request(
        http,
        "PUT",
        target + _query(ttl=_ttl(ttl), lease=_lease(lease)),
        expected,
        token,
        body,
        content_type=_content_type(content_type),
        extra_headers=_conditions(if_match, if_none_match),
    )


def _put_result(answer: _Answer) -> Dict[str, Any]:
    result = _decode_object(answer.status, answer.body)
    tag = answer.header(b"etag")
    result["etag"] = tag
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
    lease: Optional[int] = None,
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
    @param lease: attach the key to this lease (C{?lease=}, see
        L{kvtwist.client.lease}); a write without it detaches the key.
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
        token, {200, 201}, lease,
    )
    return d.addCallback(_put_result)


def get_entry(
    http: Any, url: str, key: str, *, revision: Optional[int] = None, token: Optional[str] = None
) -> Deferred:
    """
    Read C{key} with its metadata (C{GET /v1/kv/{key}}), or as it was at
    C{revision} (C{?revision=N}: the server's history). Every key is
    reachable here, including C{set} and C{commit}, and values of any type.

    (Named C{get_entry} because L{get} is the seed's JSON read.)

    @return: a Deferred firing with a L{KeyValue}.
    @raise ValueError: at once, for an empty key.
    @raise NotFoundError: (in the Deferred) if the key does not exist (or
        has expired).
    """
    target = _key_url(url, key) + _query(revision=_check_revision(revision))
    d = _request(http, "GET", target, {200}, token, accept=_ACCEPT_ANY)
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


def _check_revision(revision: Any) -> Optional[str]:
    """C{revision} as a query value, checked: a non-negative int or None."""
    if revision is None:
        return None
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise TypeError("revision is an int, not %s" % (type(revision).__name__,))
    if revision < 0:
        raise ValueError("revision must be 0 or more: %d" % (revision,))
    return "%d" % (revision,)


def _list_url(
    url: str, prefix: Any, limit: Any, after: Any, values: bool,
    revision: Any = None, cursor: Any = None,
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
    if cursor is not None and not isinstance(cursor, str):
        raise TypeError("cursor is a str, not %s" % (type(cursor).__name__,))
    if cursor is not None and (after is not None or revision is not None):
        raise ValueError("a cursor already says where the listing goes on: no after or revision with it")
    return _join(url, "v1", "kv", "") + _query(
        prefix=prefix or None,
        limit=None if limit is None else "%d" % (limit,),
        after=after,
        values="1" if values else None,
        revision=_check_revision(revision),
        cursor=cursor,
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
    revision: Optional[int] = None,
    cursor: Optional[str] = None,
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
    @param revision: list the keys as of this revision (the server's
        history), not the present.
    @param cursor: the previous page's C{cursor}: the next page of the same
        listing, at the same revision (not with C{after} or C{revision}).
    @return: a Deferred firing with the server's C{{"revision", "items",
        "next", "cursor"}}; C{next} is the key to pass as C{after} for the
        next page, or L{None} after the last one; C{cursor} continues the
        listing at its revision. Each item is C{{"key",
        "create_revision", "mod_revision", "version", "content_type",
        "size", "expires"}} (+ the value).
    @raise TypeError, ValueError: at once, for a bad argument.
    @raise KVClientError: (in the Deferred) for an error answer (400 for a
        limit over the server's maximum).
    """
    target = _list_url(url, prefix, limit, after, values, revision, cursor)
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

    Every page follows the previous page's C{cursor}, so on a server that
    keeps history all pages are read at the first page's revision
    (C{page["revision"]}): one picture, whatever is written meanwhile. On a
    server without history each page is read at its own revision.

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
    cursor = None
    while True:
        page = await list_keys(
            http, url, prefix, limit=limit, after=after if cursor is None else None,
            values=values, cursor=cursor, token=token,
        )
        yield page
        following = page["next"]
        if following is None:
            return
        if after is not None and following <= after:
            # A server that does not move forward would make this loop forever.
            raise _bad_response(200, "the listing's next (%r) does not move forward" % (following,))
        after = following
        # A server from before cursors gives none: go on after the key.
        cursor = page.get("cursor")


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
