# -*- test-case-name: tests.unit.test_client_seed -*-
"""
The seed routes (docs/api.md, "Two APIs"): JSON values staged in the
server's one shared queue until somebody commits it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from twisted.internet.defer import Deferred

from kvtwist.client._wire import (
    _ACCEPT_ANY,
    DEFAULT_CONTENT_TYPE,
    _decode_json,
    _decode_object,
    _join,
    _json_body,
    _request,
    _segment,
    _send,
)


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


def get_value(http: Any, url: str, key: str, *, token: Optional[str] = None) -> Deferred:
    """
    Read the committed value of C{key} (C{GET /{key}}) as it is stored,
    whatever its type: a value written through C{/v1} (C{kvtwist put app/x
    hello}) need not be JSON, and L{get} fails on it.

    @return: a Deferred firing with C{(value bytes, content type)}.
    @raise ValueError: at once, for an empty key.
    @raise NotFoundError: (in the Deferred) if the key is not committed.
    @raise KVClientError: (in the Deferred) for any other error answer.
    """
    d = _request(http, "GET", _join(url, _segment(key)), {200}, token, accept=_ACCEPT_ANY)
    return d.addCallback(
        lambda answer: (answer.body, answer.header(b"content-type") or DEFAULT_CONTENT_TYPE)
    )


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
