"""
A model test of v1 transactions (docs/api.md, "Transactions") against one real
C{twistd -n kvcache}, driven by hypothesis.

Each example is a short random program over a few keys: transactions in a
few slots are begun, read through, given staged puts (optionally with
C{If-None-Match: *} or C{If-Match: *}), deletes and C{/set}s, committed
(alone, or two at the same moment), or aborted; between them come direct
writes (C{PUT}/C{DELETE /v1/kv/...} and the seed's C{/set} + C{/commit}).
A plain dict model runs alongside:

  - the model applies each successful commit, in commit order (for two
    simultaneous commits, the order the server's answers and revisions
    show), and after every example the server's committed state of the
    example's keys, listed and read key by key, equals the model;
  - every answer is predicted: a transaction reads its own staged writes
    over the committed state, a delete of a key that is gone for the
    transaction is a 404, and each commit's 200 or 409 (and the keys a 409
    names) follow the conflict rule computed from the model: a key the
    transaction touched (read, staged, or tried to delete) conflicts when
    its model version at commit differs from its version at first touch,
    and each recorded precondition must hold at commit.

A key's model version is the number of the model commit that last wrote it,
or 0 while it is absent: the server's mod_revision compare, as in etcd.
Under it, a key that was absent at first touch and absent again at commit
(created and deleted by others in between) is no conflict; such cases are
counted and printed, since a literal reading of "changed after first touch"
would call them conflicts (the outcome is serializable either way).

The server is started once for the module on each store: the test runs
twice, C{[OnShelve]} and C{[OnEtcd]} (a single-member etcd, where revisions
increase but may skip; revisions are only ever checked to increase). Every
example works in a fresh key namespace, so no reset is needed. HTTP is
plain blocking C{http.client} (hypothesis and a running reactor do not
mix). Run with C{pytest -s} to see the case count and figures;
C{KVTWIST_MODEL_EXAMPLES} sets the number of cases.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers.e2e import ServerProcess, connect, http_request
from tests.helpers.e2e_stores import ETCD_AVAILABLE, ETCD_WHY, STORES, etcd_server_args
from tests.helpers.etcd import EtcdCluster

#: Examples hypothesis runs (each a short program; 0.05-0.15 s each here).
#: C{KVTWIST_MODEL_EXAMPLES} raises it for a longer soak.
MAX_EXAMPLES = int(os.environ.get("KVTWIST_MODEL_EXAMPLES", "100"))

#: Transaction slots a program may use at once (few, so they overlap).
SLOTS = 2

#: The keys of one example, under its namespace: a "/" and a non-ASCII name
#: check the paths and the listing on the way.
KEYS = ["a", "b", "c/d", "\u00fc x"]

#: Socket timeout of every request.
TIMEOUT = 10.0

BINARY = "application/octet-stream"
JSON = "application/json"


# -- the program ----------------------------------------------------------

keys = st.sampled_from(KEYS)
slots = st.integers(0, SLOTS - 1)
# Not st.binary: hypothesis keys its caches by the choices drawn, and a
# bytes choice whose hash equals an int choice's (b"" and 0 both hash to 0)
# is compared with it, which is a BytesWarning, an error under python -b.
blobs = st.lists(st.integers(0, 255), max_size=6).map(bytes)
json_values = st.one_of(
    st.integers(-1000, 1000),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 9), max_size=3),
)
pairs = st.dictionaries(keys, json_values, min_size=1, max_size=3)

#: Each kind of step with the strategies of its arguments.
STEP_ARGUMENTS = {
    "begin": (slots,),
    "read": (slots, keys),
    "put": (
        slots, keys, blobs, st.sampled_from([None, None, None, "if-none-match", "if-match"])
    ),
    "delete": (slots, keys, st.sampled_from([None, None, "if-match"])),
    "set": (slots, pairs),
    "commit": (slots,),
    "commit-both": (slots, slots),
    "abort": (slots,),
    "direct-put": (keys, blobs),
    "direct-delete": (keys,),
    "seed-commit": (pairs,),
}

#: How often each kind is drawn (by repetition): conflicts need a touch, a
#: write by someone else and a commit, so those come most often.
STEP_WEIGHTS = {
    "begin": 1, "read": 3, "put": 3, "delete": 2, "set": 2, "commit": 2,
    "commit-both": 3, "abort": 1, "direct-put": 3, "direct-delete": 1,
    "seed-commit": 1,
}

# One strategy per kind, repeated by weight; st.just(kind) keeps the kind
# visible in the tuples hypothesis prints for a failing case.
steps = st.one_of(
    *[
        st.tuples(st.just(kind), *STEP_ARGUMENTS[kind])
        for kind, weight in STEP_WEIGHTS.items()
        for _ in range(weight)
    ]
)

programs = st.lists(steps, min_size=4, max_size=16)


# -- the model ------------------------------------------------------------

#: A stored value: ("bytes", content_type, bytes) or ("json", value).
Value = Tuple[Any, ...]


@dataclass
class Model:
    """
    The committed state of one namespace, as the successful commits make it.

    @ivar values: key -> value.
    @ivar versions: key -> number of the model commit that last wrote it.
    @ivar changes: key -> how many commits changed it (deletes included),
        for counting absent-absent cases.
    @ivar commits: model commits applied so far.
    """

    values: Dict[str, Value] = field(default_factory=dict)
    versions: Dict[str, int] = field(default_factory=dict)
    changes: Dict[str, int] = field(default_factory=dict)
    commits: int = 0

    def version(self, key: str) -> int:
        """The key's version: its last write, or 0 while absent."""
        return self.versions[key] if key in self.values else 0

    def apply(self, ops: List[Tuple[str, Optional[Value]]]) -> None:
        """Apply one commit's ops (C{(key, value)}, value None = delete)."""
        self.commits += 1
        for key, value in ops:
            if value is None:
                if key in self.values:
                    del self.values[key]
                    self.changes[key] = self.changes.get(key, 0) + 1
            else:
                self.values[key] = value
                self.versions[key] = self.commits
                self.changes[key] = self.changes.get(key, 0) + 1

    def copy(self) -> "Model":
        """A copy to try a commit order on."""
        return Model(dict(self.values), dict(self.versions), dict(self.changes), self.commits)


@dataclass
class TxnModel:
    """
    One open transaction: its staged ops (in staging order, one per key),
    the version and change count of each key at first touch, and its
    recorded preconditions (C{(key, "present" | "absent")}).
    """

    txn_id: str
    staged: Dict[str, Optional[Value]] = field(default_factory=dict)
    touched: Dict[str, int] = field(default_factory=dict)
    touched_changes: Dict[str, int] = field(default_factory=dict)
    preconditions: List[Tuple[str, str]] = field(default_factory=list)

    def touch(self, model: Model, key: str) -> None:
        """Record C{key}'s version at this transaction's first touch of it."""
        if key not in self.touched:
            self.touched[key] = model.version(key)
            self.touched_changes[key] = model.changes.get(key, 0)

    def conflicts(self, model: Model) -> set:
        """The keys a commit now must name in its 409 (empty: 200)."""
        found = {key for key, seen in self.touched.items() if model.version(key) != seen}
        for key, kind in self.preconditions:
            if (kind == "present") != (key in model.values):
                found.add(key)
        return found

    def absent_absent(self, model: Model) -> int:
        """Keys absent at first touch and at commit, changed in between."""
        return sum(
            1
            for key, seen in self.touched.items()
            if seen == 0
            and key not in model.values
            and model.changes.get(key, 0) != self.touched_changes[key]
        )

    def ops(self) -> List[Tuple[str, Optional[Value]]]:
        """The staged ops as C{(key, value)}, value None for a delete."""
        return list(self.staged.items())

    def changes(self, model: Model) -> int:
        """
        The C{ops} a successful commit now reports: the changes applied. A
        staged delete of a key absent at commit changes nothing.
        """
        return sum(
            1 for key, value in self.staged.items() if value is not None or key in model.values
        )


class Figures:
    """What the runs did, over the whole test."""

    def __init__(self) -> None:
        self.cases = 0
        self.steps = 0
        self.commits_ok = 0
        self.commits_conflict = 0
        self.simultaneous = 0
        self.direct_writes = 0
        self.absent_absent = 0

    def summary(self, seconds: float) -> str:
        """One line for the test output."""
        return (
            "txn model: %d cases, %d steps; txn commits %d applied, %d refused (409), "
            "%d simultaneous pairs; %d direct writes; %d absent-absent keys "
            "(no conflict); %.1f s wall"
            % (self.cases, self.steps, self.commits_ok, self.commits_conflict,
               self.simultaneous, self.direct_writes, self.absent_absent, seconds)
        )


# -- talking to the server --------------------------------------------------


class Client:
    """Blocking requests over one keep-alive connection."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.connection = connect(base_url, TIMEOUT)

    def request(
        self, method: str, path: str, body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> Tuple[int, Dict[str, str], bytes]:
        """One request; C{(status, headers, body)}."""
        # No retry on a cut connection: resending a commit could apply it
        # twice, and a cut here is a failure anyway.
        return http_request(self.base_url, method, path, body, headers, connection=self.connection)

    def close(self) -> None:
        self.connection.close()


def decode_body(content_type: str, body: bytes) -> Value:
    """A value as the model holds it, from a GET's answer."""
    if content_type.split(";")[0].strip() == JSON:
        return ("json", json.loads(body))
    return ("bytes", content_type, body)


def decode_item(item: Dict[str, Any]) -> Value:
    """A value as the model holds it, from a listing item with values."""
    if "value" in item:
        return ("json", item["value"])
    return ("bytes", item["content_type"], base64.b64decode(item["value_base64"]))


# -- the test -----------------------------------------------------------------


@pytest.fixture(scope="module", params=STORES)
def model_server(request):
    """
    One kvcache for the whole module on each store (tests/helpers/e2e_stores.py):
    on the shelve store, and on a single-member etcd of its own; killed and
    removed at the end. Without etcd the etcd variant is skipped.
    """
    cluster = None
    extra_args: List[str] = []
    if request.param == "OnEtcd":
        if not ETCD_AVAILABLE:
            pytest.skip(ETCD_WHY)
        cluster = EtcdCluster(1).start()
        extra_args = etcd_server_args(cluster, "model")
    base = tempfile.mkdtemp(prefix="kvtwist-model-")
    process = ServerProcess(os.path.join(base, "data"), extra_args, log_dir=base)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        if cluster is not None:
            cluster.stop()
        if not os.environ.get("KVTWIST_KEEP_E2E"):
            shutil.rmtree(base, True)


class Runner:
    """Runs one program against the server and the model, asserting as it goes."""

    def __init__(self, server: ServerProcess, namespace: str, figures: Figures) -> None:
        self.url = server.url
        self.ns = namespace
        self.figures = figures
        self.client = Client(self.url)
        self.model = Model()
        self.txns: Dict[int, TxnModel] = {}
        #: Revisions of the successful commits, in the order they were
        #: answered: they must increase.
        self.revisions: List[int] = []

    # paths

    def full(self, key: str) -> str:
        """The key's full name, in this example's namespace."""
        return self.ns + key

    def key_path(self, key: str) -> str:
        """The v1 path of a key."""
        return "/v1/kv/" + quote(self.full(key), safe="/")

    def txn_path(self, txn: TxnModel, rest: str = "") -> str:
        """The path of a transaction (plus C{rest})."""
        return "/v1/txn/" + txn.txn_id + rest

    def txn_key_path(self, txn: TxnModel, key: str) -> str:
        """The path of a key inside a transaction."""
        return self.txn_path(txn, "/kv/" + quote(self.full(key), safe="/"))

    def expect(self, answer, status: int, what: str) -> Tuple[int, Dict[str, str], bytes]:
        """Assert an answer's status; return the answer."""
        assert answer[0] == status, "%s: expected %d, got %d %r" % (
            what, status, answer[0], answer[2][:300]
        )
        return answer

    def committed_revision(self, revision: int, what: str, empty: bool = False) -> None:
        """
        Record a successful commit's revision: past the last one, or equal
        to it for a commit that changes nothing (nothing staged, or only
        deletes of absent keys), which makes no revision.
        """
        if self.revisions:
            last = self.revisions[-1]
            assert revision >= last if empty else revision > last, (
                "%s: revision %d after %r" % (what, revision, self.revisions[-3:])
            )
        self.revisions.append(revision)

    # the program

    def run(self, program) -> None:
        """Run the program, check the state, abort what is left open."""
        try:
            for step in program:
                self.figures.steps += 1
                getattr(self, "do_" + step[0].replace("-", "_"))(*step[1:])
            self.check_state()
        finally:
            for slot in list(self.txns):
                self.do_abort(slot)
            self.client.close()

    def opened(self, slot: int) -> TxnModel:
        """The transaction in C{slot}, begun first if the slot is empty."""
        if slot not in self.txns:
            self.do_begin(slot)
        return self.txns[slot]

    def do_begin(self, slot: int) -> None:
        """Open a transaction in C{slot} unless one is open there."""
        if slot in self.txns:
            return
        _, headers, body = self.expect(self.client.request("POST", "/v1/txn"), 201, "begin")
        txn_id = json.loads(body)["id"]
        assert headers["location"] == "/v1/txn/" + txn_id
        self.txns[slot] = TxnModel(txn_id)

    def do_read(self, slot: int, key: str) -> None:
        """Read through the transaction: its staged op, else the model's value."""
        txn = self.opened(slot)
        status, headers, body = self.client.request("GET", self.txn_key_path(txn, key))
        if key in txn.staged:
            expected = txn.staged[key]
        else:
            expected = self.model.values.get(key)
            txn.touch(self.model, key)
        if expected is None:
            assert status == 404, "txn read %r: expected 404, got %d %r" % (key, status, body)
        else:
            assert status == 200, "txn read %r: expected 200, got %d %r" % (key, status, body)
            got = decode_body(headers["content-type"], body)
            assert got == expected, "txn read %r: %r != model %r" % (key, got, expected)

    def do_put(self, slot: int, key: str, value: bytes, condition: Optional[str]) -> None:
        """Stage a write, with If-None-Match: * or If-Match: * recorded."""
        txn = self.opened(slot)
        headers = {"Content-Type": BINARY}
        if condition == "if-none-match":
            headers["If-None-Match"] = "*"
        elif condition == "if-match":
            headers["If-Match"] = "*"
        self.expect(
            self.client.request("PUT", self.txn_key_path(txn, key), value, headers), 200, "txn put"
        )
        txn.touch(self.model, key)
        txn.staged[key] = ("bytes", BINARY, value)
        if condition is not None:
            txn.preconditions.append((key, "absent" if condition == "if-none-match" else "present"))

    def do_delete(self, slot: int, key: str, condition: Optional[str]) -> None:
        """Stage a delete: 404 when the key is gone for the transaction."""
        txn = self.opened(slot)
        headers = {"If-Match": "*"} if condition else {}
        status, _, body = self.client.request("DELETE", self.txn_key_path(txn, key), None, headers)
        # The server reads the key to decide, so even a refused delete
        # counts as a touch (the transaction saw it absent).
        txn.touch(self.model, key)
        if key in txn.staged:
            exists = txn.staged[key] is not None
        else:
            exists = key in self.model.values
        if exists:
            assert status == 200, "txn delete %r: expected 200, got %d %r" % (key, status, body)
            txn.staged[key] = None
            if condition:
                txn.preconditions.append((key, "present"))
        else:
            assert status == 404, "txn delete %r: expected 404, got %d %r" % (key, status, body)

    def do_set(self, slot: int, values: Dict[str, Any]) -> None:
        """Stage JSON pairs with C{/set}: 201 when every key is new."""
        txn = self.opened(slot)
        body = json.dumps({self.full(k): v for k, v in values.items()}).encode("utf-8")
        created = all(k not in self.model.values for k in values)
        _, _, answer = self.expect(
            self.client.request("POST", self.txn_path(txn, "/set"), body), 201 if created else 200,
            "txn /set",
        )
        assert json.loads(answer) == {
            self.full(k): ("updated" if k in self.model.values else "created") for k in values
        }
        for key, value in values.items():
            txn.touch(self.model, key)
            txn.staged[key] = ("json", value)

    def predict(self, model: Model, txn: TxnModel) -> set:
        """The full names a commit of C{txn} must name now (empty: 200)."""
        return {self.full(key) for key in txn.conflicts(model)}

    def check_commit(self, txn: TxnModel, answer, expected: set, what: str) -> None:
        """Assert one commit's answer against the prediction."""
        status, _, body = answer
        if expected:
            assert status == 409, "%s: expected 409 naming %r, got %d %r" % (
                what, expected, status, body[:300]
            )
            named = {conflict["key"] for conflict in json.loads(body)["conflicts"]}
            assert named == expected, "%s: 409 named %r, model says %r" % (what, named, expected)
        else:
            assert status == 200, "%s: expected 200, got %d %r" % (what, status, body[:300])
            changes = txn.changes(self.model)
            assert json.loads(body)["ops"] == changes, "%s: ops %r, model changes %d" % (
                what, json.loads(body)["ops"], changes)

    def finish(self, txn: TxnModel, answer) -> None:
        """Apply a committed transaction to the model and count it."""
        if answer[0] == 200:
            self.figures.absent_absent += txn.absent_absent(self.model)
            self.model.apply(txn.ops())
            self.figures.commits_ok += 1
        else:
            self.figures.commits_conflict += 1

    def do_commit(self, slot: int) -> None:
        """Commit alone; the transaction is finished either way."""
        if slot not in self.txns:
            return
        txn = self.txns.pop(slot)
        answer = self.client.request("POST", self.txn_path(txn, "/commit"))
        self.check_commit(txn, answer, self.predict(self.model, txn), "commit")
        if answer[0] == 200:
            self.committed_revision(
                json.loads(answer[2])["revision"], "commit", not txn.changes(self.model)
            )
        self.finish(txn, answer)
        # Finished either way: the id is gone.
        self.expect(self.client.request("GET", self.txn_path(txn)), 404, "finished txn")

    def do_commit_both(self, first: int, second: int) -> None:
        """Send two commits at the same moment from two connections."""
        if first == second or first not in self.txns or second not in self.txns:
            self.do_commit(first)
            self.do_commit(second)
            return
        self.figures.simultaneous += 1
        txns = [self.txns.pop(first), self.txns.pop(second)]
        answers: List[Any] = [None, None]
        barrier = threading.Barrier(2, timeout=TIMEOUT)

        def send(index: int) -> None:
            """Thread body: wait for the other thread, then commit."""
            client = Client(self.url)
            try:
                barrier.wait()
                answers[index] = client.request("POST", self.txn_path(txns[index], "/commit"))
            except BaseException as e:
                answers[index] = e
            finally:
                client.close()

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 2)
        assert not any(thread.is_alive() for thread in threads), "a commit hung"
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        # The server serialized them one way or the other: find an order
        # under which the model predicts both answers (and, if both were
        # applied, whose revisions agree with it).
        for order in permutations([0, 1]):
            if self.order_explains(order, txns, answers):
                break
        else:
            raise AssertionError(
                "no commit order explains %r for %r" % ([a[:1] + a[2:] for a in answers], txns)
            )
        for index in order:
            if answers[index][0] == 200:
                self.committed_revision(
                    json.loads(answers[index][2])["revision"], "commit-both",
                    not txns[index].changes(self.model),
                )
            self.finish(txns[index], answers[index])

    def order_explains(self, order, txns, answers) -> bool:
        """
        Whether committing C{txns} in C{order} predicts both C{answers}:
        statuses, conflict keys, change counts, and revisions that follow
        the rule of L{committed_revision}.
        """
        model = self.model.copy()
        last = self.revisions[-1] if self.revisions else 0
        for index in order:
            expected = self.predict(model, txns[index])
            status, _, body = answers[index]
            if expected:
                if status != 409 or {c["key"] for c in json.loads(body)["conflicts"]} != expected:
                    return False
                continue
            if status != 200 or json.loads(body)["ops"] != txns[index].changes(model):
                return False
            revision = json.loads(body)["revision"]
            if revision < last or (txns[index].changes(model) and revision == last):
                return False
            last = revision
            model.apply(txns[index].ops())
        return True

    def do_abort(self, slot: int) -> None:
        """Abort: 204, then the id is gone."""
        if slot not in self.txns:
            return
        txn = self.txns.pop(slot)
        self.expect(self.client.request("DELETE", self.txn_path(txn)), 204, "abort")
        self.expect(self.client.request("GET", self.txn_path(txn)), 404, "aborted txn")

    def do_direct_put(self, key: str, value: bytes) -> None:
        """A one-op commit with PUT /v1/kv: 201 created, 200 updated."""
        created = key not in self.model.values
        _, _, body = self.expect(
            self.client.request("PUT", self.key_path(key), value, {"Content-Type": BINARY}),
            201 if created else 200, "PUT",
        )
        self.committed_revision(json.loads(body)["revision"], "PUT")
        self.model.apply([(key, ("bytes", BINARY, value))])
        self.figures.direct_writes += 1

    def do_direct_delete(self, key: str) -> None:
        """A one-op commit with DELETE /v1/kv: 204, or 404 when absent."""
        if key not in self.model.values:
            self.expect(self.client.request("DELETE", self.key_path(key)), 404, "DELETE absent")
            return
        _, headers, _ = self.expect(
            self.client.request("DELETE", self.key_path(key)), 204, "DELETE"
        )
        self.committed_revision(int(headers["kv-revision"]), "DELETE")
        self.model.apply([(key, None)])
        self.figures.direct_writes += 1

    def do_seed_commit(self, values: Dict[str, Any]) -> None:
        """The seed's way: POST /set then POST /commit."""
        body = json.dumps({self.full(k): v for k, v in values.items()}).encode("utf-8")
        created = all(k not in self.model.values for k in values)
        self.expect(self.client.request("POST", "/set", body), 201 if created else 200, "seed /set")
        # The seed's answers carry no KV-Revision (its API is kept as it
        # was), so this commit's place shows only in the model's order.
        self.expect(self.client.request("POST", "/commit"), 204, "seed /commit")
        self.model.apply([(key, ("json", value)) for key, value in values.items()])
        self.figures.direct_writes += 1

    # the end of an example

    def check_state(self) -> None:
        """The server's committed state of the namespace equals the model."""
        _, _, body = self.expect(
            self.client.request("GET", "/v1/kv/?values=1&prefix=" + quote(self.ns, safe="")),
            200, "listing",
        )
        page = json.loads(body)
        assert page["next"] is None
        listed = {item["key"]: decode_item(item) for item in page["items"]}
        expected = {self.full(key): value for key, value in self.model.values.items()}
        assert listed == expected, "listing %r != model %r" % (listed, expected)
        # Key by key too: GETs are served from the read cache, which must
        # agree with the store.
        for key in KEYS:
            status, headers, body = self.client.request("GET", self.key_path(key))
            if key in self.model.values:
                assert status == 200, "GET %r: %d" % (key, status)
                assert decode_body(headers["content-type"], body) == self.model.values[key]
            else:
                assert status == 404, "GET %r: %d %r" % (key, status, body)


def test_transactions_match_model(model_server):
    """
    Random interleavings of transactions (begin, read, staged put with or
    without a precondition, delete, /set, commit alone or two at once,
    abort) and direct writes (PUT, DELETE, seed /set + /commit) leave the
    server's committed state equal to a dict model of the successful
    commits applied in commit order; every read, staging answer and commit
    outcome (200, or 409 naming exactly the keys the conflict rule
    predicts) is what the model predicts, and committed revisions increase
    in the order the commits were answered. The run must have exercised
    both outcomes of a commit.
    """
    figures = Figures()
    started = time.monotonic()

    # Hypothesis drives the inner function; the outer one owns the figures,
    # so they are printed once, after every case.
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(program=programs)
    # The cases the rule turns on, run every time: a read then another's
    # write (409); the absent-absent case (no conflict); a failed
    # If-None-Match; two commits racing for one key.
    @example(program=[("read", 0, "a"), ("direct-put", "a", b"x"), ("commit", 0)])
    @example(
        program=[
            ("read", 0, "a"), ("direct-put", "a", b"x"), ("direct-delete", "a"),
            ("put", 0, "b", b"y", None), ("commit", 0),
        ]
    )
    @example(
        program=[
            ("put", 0, "a", b"1", "if-none-match"), ("seed-commit", {"a": 1}), ("commit", 0),
        ]
    )
    @example(
        program=[
            ("put", 0, "a", b"0", None), ("put", 1, "a", b"1", None),
            ("set", 1, {"b": [1]}), ("commit-both", 0, 1),
        ]
    )
    def run_case(program):
        """One hypothesis case: a program in a fresh namespace."""
        figures.cases += 1
        # A fresh namespace per case (shrinking reruns included): no reset.
        Runner(model_server, "model-%d-%d/" % (os.getpid(), figures.cases), figures).run(program)

    try:
        run_case()
    finally:
        print("\n" + figures.summary(time.monotonic() - started))
    assert figures.commits_ok > 0 and figures.commits_conflict > 0, figures.summary(0)
