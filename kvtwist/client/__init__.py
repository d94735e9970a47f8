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

The seed routes (docs/api.md, "Two APIs"), JSON values in one shared
staging queue:

    - L{get}: C{GET /{key}}, the committed JSON value (L{get_value}: the
      bytes and content type of a value of any type).
    - L{set_many}: C{POST /set}, stage writes in the server's shared queue.
    - L{delete}: C{DELETE /set}, stage deletes in the shared queue.
    - L{commit}: C{POST /commit}, apply the shared queue atomically and
      durably.

The v1 routes (docs/api.md), values as bytes with a content type and
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
    - L{batch}: C{POST /v1/batch}, a one-request transaction
      (L{batch_encoded} with the body encoded already).
    - L{incr}: add to a counter atomically (an C{incr} op in a batch).
    - L{get_limits}: C{GET /v1/limits}, every limit the server enforces.
    - L{transact}: run batch-shaped ops through a multi-request transaction
      (what C{kvtwist txn} does).

Watching (docs/api.md, "Watching"):

    - L{watch}: C{GET /v1/watch?prefix=P}, the Server-Sent Events feed as
      a L{Watch}: an async iterator of L{WatchEvent}s that resumes by itself
      after a disconnect (C{Last-Event-ID}), with no event lost or
      repeated, and raises L{HistoryGone} when the server can no longer
      replay what it missed.
    - L{wait_for}: C{GET /v1/kv/{key}?index=N&wait=S}, one long-poll.

        async with client.watch(treq, url, "jobs/") as events:
            async for event in events:
                print(event.revision, event.kind, event.key)

Backups:

    - L{save_snapshot}: C{GET /v1/snapshot}, every key at one revision as
      JSON Lines into a file, checked whole.

Coordination on leases (etcd's recipes), each with a reactor injected for
its keepalive timers:

    - L{grant}, L{keepalive}, L{show_lease}, L{revoke}: the C{/v1/lease}
      routes; L{Lease}: a lease kept alive while held, with C{on_lost} and
      a C{lost} Deferred (C{async with Lease(...) as lease}).
    - L{Lock}: a fair lock (C{async with Lock(...) as lock}), whose
      C{fencing_revision} grows with every acquisition.
    - L{Election}: C{campaign}, C{proclaim}, C{resign}; L{leader} and
      L{observe} follow who leads.

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
C{ResponseFailed}, ...), unchanged. L{with_timeout} bounds a call and
fails it with L{TimedOut} (C{"timed out after 2 s"}) when it runs out.
Every request says C{User-Agent: kvtwist/VERSION}.

New routes are added in the same shape: a public C{name(http, url, ...,
token=None)} that checks its arguments at once, sends with
L{kvtwist.client._wire._request} and decodes the answer in a callback, with
a docstring giving the result and the errors; it lives in the module of its
routes and is exported here.

The modules: L{errors <kvtwist.client.errors>}, the shared HTTP plumbing
(C{_wire}), L{seed <kvtwist.client.seed>}, L{kv <kvtwist.client.kv>} (v1
keys and listings), L{txn <kvtwist.client.txn>}, L{batch
<kvtwist.client.batch>}, L{sse <kvtwist.client.sse>} (the event-stream
format), L{watch <kvtwist.client.watch>}, L{lease <kvtwist.client.lease>},
L{lock <kvtwist.client.lock>} and L{election <kvtwist.client.election>}. Import from C{kvtwist.client}.
"""

from kvtwist.client._wire import (
    DEFAULT_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    KeyValue,
    decode_value_base64,
    is_json_type,
    text_of,
    value_fields,
)
from kvtwist.client.batch import (
    OP_KINDS,
    batch,
    batch_encoded,
    check_ops,
    get_limits,
    incr,
    transact,
)
from kvtwist.client.errors import (
    ConflictError,
    KVClientError,
    NotFoundError,
    PreconditionFailedError,
    TimedOut,
    with_timeout,
)
from kvtwist.client.election import Election, NotLeader, leader, observe
from kvtwist.client.kv import get_entry, iter_pages, list_all, list_keys, put, remove
from kvtwist.client.lease import Lease, LeaseLost, grant, keepalive, revoke, show_lease
from kvtwist.client.lock import Lock
from kvtwist.client.seed import commit, delete, get, get_value, set_many
from kvtwist.client.snapshot import save_snapshot
from kvtwist.client.sse import EventStreamParser, ServerSentEvent, SSEComment
from kvtwist.client.txn import Transaction, begin
from kvtwist.client.watch import Watch, wait_for, watch
from kvtwist.client.watch_events import HistoryGone, WatchEvent

__all__ = [
    "KVClientError",
    "NotFoundError",
    "ConflictError",
    "PreconditionFailedError",
    "TimedOut",
    "with_timeout",
    "KeyValue",
    "Transaction",
    "DEFAULT_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "OP_KINDS",
    "decode_value_base64",
    "is_json_type",
    "text_of",
    "value_fields",
    "get",
    "get_value",
    "set_many",
    "delete",
    "commit",
    "put",
    "get_entry",
    "remove",
    "list_keys",
    "iter_pages",
    "save_snapshot",
    "list_all",
    "begin",
    "batch",
    "batch_encoded",
    "get_limits",
    "incr",
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
    "grant",
    "keepalive",
    "show_lease",
    "revoke",
    "Lease",
    "LeaseLost",
    "Lock",
    "Election",
    "NotLeader",
    "leader",
    "observe",
]
