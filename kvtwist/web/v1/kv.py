# -*- test-case-name: tests.unit.test_web_v1 -*-
"""
C{/v1/kv/}: keys with revisions and CAS, prefix listing (of entries, or
of key names rolled up at a separator), and delete by prefix.

The key is the percent-decoded rest of the path and may contain C{/}:
C{/v1/kv/a%2Fb} and C{/v1/kv/a/b} name the same key. PUT and DELETE are
one-op commits, as atomic and durable as C{/commit}.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kvtwist.auth import Authorizer, principal_of
from kvtwist.listing import list_readable
from kvtwist.errors import ConflictError, InvalidInput, KeyNotFound, PreconditionFailed
from kvtwist.model import Check, Delete
from kvtwist.interfaces import IHistoricalStore
from kvtwist.strictjson import check_key, decode_key, parse_revision
from kvtwist.model import Entry
from kvtwist.store.capabilities import read_linearizable
from kvtwist.web.encoded import encode_v1, peek_encoded, v1_entry_response, write_entry
from kvtwist.web.resource import Response, json_response, peek_entry, read_body, write_response
from kvtwist.web.v1.base import (
    V1Context,
    V1Resource,
    describe,
    entry_headers,
    flag_arg,
    int_arg,
    put_from,
    query_arg,
)
from kvtwist.web.v1.history import decode_cursor, encode_cursor, historical, revision_arg
from kvtwist.web.v1.watch import wait_for_change, wait_seconds
from kvtwist.web.v1.conditional import not_modified, precondition_failures, write_checks

#: Default page size of a listing.
DEFAULT_PAGE = 100

#: The largest character: a cursor of C{rolled + LAST_CHARACTER} sorts after
#: every key that starts with C{rolled} (in UTF-8 byte order, as code
#: points), so a keys listing resumes past a rolled-up group.
LAST_CHARACTER = "\U0010ffff"


def roll_up(keys, prefix: str, separator: str) -> list:
    """
    C{keys} (sorted, under C{prefix}) as a keys listing shows them: each key
    with C{separator} after the prefix cut just after its first one (Consul's
    C{?keys&separator}: C{prefix + "a/b/c"} lists as C{prefix + "a/"}), once.
    An empty separator rolls nothing up.
    """
    listed: list = []
    for key in keys:
        if separator:
            cut = key.find(separator, len(prefix))
            if cut >= 0:
                key = key[: cut + len(separator)]
        # Keys sharing a rolled-up name are adjacent in sorted order.
        if not listed or listed[-1] != key:
            listed.append(key)
    return listed


def is_rolled_up(key: str, prefix: str, separator: str) -> bool:
    """Whether C{key} is a name L{roll_up} made (it ends at its first separator)."""
    return bool(separator) and key.find(separator, len(prefix)) == len(key) - len(separator)


def rest_of_path(name: bytes, request: Request) -> bytes:
    """
    Consume the rest of the request path into one key: the key may contain
    C{/}, so it is everything after C{/v1/kv/}.
    """
    # Both paths are lists once traversal has started, as it has here
    # (None only before).
    rest = request.postpath or []
    segments = [name] + rest
    if request.prepath is not None:
        request.prepath.extend(rest)
    request.postpath = []
    return b"/".join(segments)


def precondition_failed(error: ConflictError) -> PreconditionFailed:
    """The 412 for a conditional write whose header did not hold."""
    failure = error.failures[0]
    return PreconditionFailed(
        "%s did not hold for %r (its current revision is %d)"
        % (failure.check.tag, failure.check.key, failure.actual),
        key=failure.check.key,
        current_revision=failure.actual,
    )


class KeyCollection(V1Resource):
    """C{/v1/kv}: C{GET} lists keys; each child path is a key."""

    route = "/v1/kv/"
    parameters = {
        "GET": ("prefix", "after", "limit", "values", "keys", "separator", "revision", "cursor"),
        "DELETE": ("prefix", "all"),
    }

    def getChild(self, path: bytes, request: Request) -> Resource:
        if not path and not request.postpath:
            return self
        return KeyResource(self.context, rest_of_path(path, request))

    def render_GET(self, request: Request) -> int:
        return self.respond(request, self._list)

    def _list(self, request: Request) -> Deferred:
        prefix = query_arg(request, "prefix") or ""
        after = query_arg(request, "after")
        if after is not None:
            check_key(after)
        limit = int_arg(request, "limit", DEFAULT_PAGE, 1, self.context.limits.max_list_limit)
        with_values = flag_arg(request, "values")
        separator = query_arg(request, "separator")
        if flag_arg(request, "keys"):
            if with_values:
                raise InvalidInput(
                    "bad-parameter", "keys=1 lists names only: values=1 does not go with it",
                    parameter="values",
                )
            return self._list_keys(request, prefix, after, limit, separator or "")
        if separator:
            raise InvalidInput(
                "bad-parameter", "separator rolls up a keys listing: give it with keys=1",
                parameter="separator",
            )
        # A listing of the past; or, through a page's cursor, the next page
        # of a listing pinned at its first page's revision.
        revision = revision_arg(request)
        cursor = query_arg(request, "cursor")
        if cursor is not None:
            if after is not None or revision is not None:
                raise InvalidInput(
                    "bad-parameter",
                    "cursor already says where the listing goes on: pass it without after or revision",
                    parameter="cursor",
                )
            revision, after = decode_cursor(cursor)
        store = self.context.store
        pinned = IHistoricalStore.providedBy(store)

        token = principal_of(request)

        def page_response(page) -> Response:
            following = page.entries[-1].key if page.more else None
            return json_response(
                200,
                {
                    "revision": page.revision,
                    "items": [describe(entry, with_values) for entry in page.entries],
                    "next": following,
                    "cursor": (
                        encode_cursor(page.revision if pinned else None, following)
                        if following is not None
                        else None
                    ),
                },
            )

        if revision is not None:
            historical(store)
        # Only what the token may read is listed, so the cursor, the last
        # key listed, never names a key the token may not read. A page also
        # ends at max_list_bytes of keys and values, so one request can
        # neither hold a thousand large values in memory nor encode them on
        # the reactor thread in one go.
        listing = list_readable(
            store,
            token,
            prefix,
            after,
            limit,
            self.context.limits.max_list_bytes,
            revision,
        )
        return ensureDeferred(listing).addCallback(page_response)

    def _list_keys(
        self, request: Request, prefix: str, after: Optional[str], limit: int, separator: str
    ) -> Deferred:
        """
        One page of key names, rolled up at C{separator}, from one listing
        of C{limit} keys (so a page of rolled-up names may hold fewer than
        C{limit}). As for entries, only keys the token may read are
        visited, so neither a name nor C{next} reveals another. A C{next}
        that is a rolled-up name resumes past every key under it.
        """
        cursor = after
        if after is not None and after.startswith(prefix) and is_rolled_up(after, prefix, separator):
            cursor = after + LAST_CHARACTER

        def page_response(page) -> Response:
            keys = roll_up((entry.key for entry in page.entries), prefix, separator)
            next_key = keys[-1] if page.more and keys else None
            return json_response(200, {"revision": page.revision, "keys": keys, "next": next_key})

        listing = list_readable(
            self.context.store,
            principal_of(request),
            prefix,
            cursor,
            limit,
            self.context.limits.max_list_bytes,
        )
        return ensureDeferred(listing).addCallback(page_response)

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, self._delete_prefix)

    def _delete_prefix(self, request: Request) -> Deferred:
        """
        Delete every key under C{?prefix=} in one commit. The empty prefix
        (every key) needs an explicit C{?all=1}, so a forgotten parameter
        never empties the store. Each key deleted counts against
        C{max_keys_per_request} (413 beyond, nothing deleted). The token
        must be allowed to write the prefix itself, which covers every key
        under it.
        """
        prefix = query_arg(request, "prefix") or ""
        everything = flag_arg(request, "all")
        if not prefix and not everything:
            raise InvalidInput(
                "bad-parameter",
                "a prefix delete needs a non-empty prefix, or all=1 to delete every key",
                parameter="prefix",
            )
        if prefix and everything:
            raise InvalidInput(
                "bad-parameter", "all=1 deletes every key: give it without a prefix",
                parameter="all",
            )
        if prefix:
            check_key(prefix)
        Authorizer.require_write(principal_of(request), [prefix])
        limit = self.context.limits.max_keys_per_request
        d = self.context.store.delete_prefix(prefix, limit)
        return d.addCallback(
            lambda result: json_response(
                200,
                {
                    "deleted": sum(1 for change in result.changes if change.kind == "delete"),
                    "revision": result.revision,
                },
            )
        )


class KeyResource(V1Resource):
    """C{/v1/kv/{key}}: read, write and delete one key."""

    route = "/v1/kv/{key}"
    parameters = {"GET": ("index", "wait", "consistent", "revision"), "PUT": ("ttl", "lease")}

    def __init__(self, context: V1Context, raw_key: bytes) -> None:
        super().__init__(context)
        self._raw_key = raw_key

    def render_GET(self, request: Request) -> int:
        # The hot path: a plain read that hits the cache is answered at once,
        # with no Deferred, its headers encoded once while the entry stays
        # cached (a conditional read may be a 304: built per request).
        # Reads with parameters (long-polls) go the full way.
        if b"?" not in request.uri:
            store = self.context.store
            if request.getHeader(b"if-none-match") is None:
                encoded = peek_encoded(store, self._raw_key, request, encode_v1)
                if encoded is not None:
                    write_entry(request, encoded, store.revision)
                    return NOT_DONE_YET
            else:
                entry = peek_entry(store, self._raw_key, request)
                if entry is not None:
                    write_response(request, self.decorate(self._found(request, entry)))
                    return NOT_DONE_YET
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._get(request)))

    async def _get(self, request: Request) -> Response:
        key = decode_key(self._raw_key)
        Authorizer.require_read(principal_of(request), [key])
        index = query_arg(request, "index")
        revision = revision_arg(request)
        store = self.context.store
        if revision is not None:
            if index is not None:
                raise InvalidInput(
                    "bad-parameter", "a read at a revision cannot also wait (index)",
                    parameter="revision",
                )
            entry = await historical(store).get_at(key, revision)
        elif flag_arg(request, "consistent"):
            # Past every cache: what a quorum has acknowledged (etcd), or
            # the store itself (shelve).
            entry = await read_linearizable(store, key)
        else:
            entry = await store.get(key)
        if index is not None:
            entry = await self._long_poll(request, key, entry, index)
        if entry is None:
            raise KeyNotFound([key])
        return self._found(request, entry)

    async def _long_poll(
        self, request: Request, key: str, entry: Optional[Entry], raw_index: str
    ) -> Optional[Entry]:
        """
        Hold the read until the key changes after revision C{index} (its
        mod_revision passes it, or it is deleted or expires after it), or
        the wait ends; then return its state. A missing key wakes only when
        it appears.
        """
        index = parse_revision(raw_index)
        if index is None:
            raise InvalidInput("bad-parameter", "index must be a revision", parameter="index")
        wait = wait_seconds(request, self.context)
        if entry is not None and entry.mod_revision > index:
            return entry
        # index 0 means "never seen it": its absence is not news, however
        # short the history (etcd's starts at 1, a restarted shelve's later).
        if entry is None and index and self.context.hub.removed_since(key, index):
            return None
        await wait_for_change(request, self.context, key, wait)
        return await self.context.store.get(key)

    @staticmethod
    def _found(request: Request, entry: Entry) -> Response:
        found = v1_entry_response(entry)
        if not_modified(request, entry):
            return Response(304, content_type=None, headers=found.headers)
        return found

    def render_PUT(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._put(request)))

    async def _put(self, request: Request) -> Response:
        key = decode_key(self._raw_key)
        Authorizer.require_write(principal_of(request), [key])
        put = put_from(request, key, read_body(request), self.context.clock, self.context.store)
        checks = write_checks(request, key)
        try:
            result = await self.context.store.commit([put], checks)
        except ConflictError as e:
            raise precondition_failed(e)
        change = result.changes[0]
        created = change.previous is None
        response = json_response(
            201 if created else 200,
            {"key": key, "revision": result.revision, "created": created,
             "version": change.entry.version},
        )
        response.headers.update(entry_headers(change.entry))
        if created:
            response.headers[b"location"] = request.uri.split(b"?", 1)[0]
        return response

    def render_DELETE(self, request: Request) -> int:
        return self.respond(request, lambda request: Deferred.fromCoroutine(self._delete(request)))

    async def _delete(self, request: Request) -> Response:
        key = decode_key(self._raw_key)
        Authorizer.require_write(principal_of(request), [key])
        checks = write_checks(request, key) + [Check.present(key, tag="exists")]
        try:
            await self.context.store.commit([Delete(key)], checks)
        except ConflictError as e:
            if precondition_failures(e.failures):
                raise precondition_failed(
                    ConflictError([f for f in e.failures if f.check.tag != "exists"])
                )
            raise KeyNotFound([key])
        return Response(204, content_type=None)
