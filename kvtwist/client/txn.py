# -*- test-case-name: tests.unit.test_client_txn -*-
"""
Multi-request transactions (docs/api.md, "Transactions"): L{begin} opens one
on the server, and the L{Transaction} it gives stages, reads through,
commits or aborts it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union
from urllib.parse import quote

from twisted.internet.defer import Deferred

from kvtwist.client._wire import (
    _ACCEPT_ANY,
    _Answer,
    _decode_object,
    DEFAULT_CONTENT_TYPE,
    _join,
    _json_body,
    _request,
    _segment,
)
from kvtwist.client.errors import _bad_response, ConflictError
from kvtwist.client.kv import _conditions, _entry_from, _put_request


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
