"""
Tests for L{kvtwist.dumpload} and L{kvtwist.dumpformat}: the record format, C{dump} at one revision,
C{load} in batches with its checkpoint, and the command glue; in
memory through C{StubTreq}, then end to end against the real C{twistd
kvcache} with the commands run as subprocesses, including a load killed
with SIGKILL half way and resumed.

One module though long: dump and load are tested as a round trip, sharing
the fixtures that build, dump and reload a store.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import client, dumpformat, dumpload, wire
from kvtwist.dumpformat import DumpFormatError, Record, parse_record
from kvtwist.dumpload import CheckpointMismatch
from kvtwist.errors import StoreUnavailable
from kvtwist.limits import Limits
from kvtwist.model import Put
from kvtwist.testing import MemoryStore, memory_client
from tests.helpers.e2e import start_server, temp_dir
from tests.helpers.webtest import StoreWithoutHistory

URL = "http://kv.test"
#: Where the in-memory clocks start: a plausible "now", in epoch seconds.
NOW = 1_900_000_000.0


def line(**record: Any) -> bytes:
    """One dump line."""
    return (json.dumps(record) + "\n").encode("utf-8")


def json_record(key: str, value: Any, expires: Optional[str] = None) -> bytes:
    return line(key=key, value=value, content_type="application/json", expires=expires)


class Hooked:
    """
    A treq-like client in front of another that calls C{hook(method, url)}
    before passing each request on: to change the store at a chosen moment.
    """

    def __init__(self, http: Any, hook: Callable[[str, str], None]) -> None:
        self.http = http
        self.hook = hook
        self.requests: List[Tuple[str, str]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred:
        self.requests.append((method, url))
        self.hook(method, url)
        return self.http.request(method, url, **kwargs)


class MemoryTestCase(SynchronousTestCase):
    """A source store and a target store, each behind its own StubTreq."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.http, self.store = memory_client(MemoryStore(clock=self.clock))
        self.target_http, self.target = memory_client(MemoryStore(clock=self.clock))
        self.dir = tempfile.mkdtemp(prefix="kvtwist-dumpload-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def without_history(self) -> None:
        """
        Make the source a store that keeps no history (the etcd store's
        case): its listing pages are read each at its own revision.
        """
        self.http, self.store = memory_client(StoreWithoutHistory(clock=self.clock))

    def put(self, key: str, value: bytes, content_type: str = "application/json",
            ttl: Optional[float] = None) -> None:
        self.successResultOf(
            client.put(self.http, URL, key, value, content_type=content_type, ttl=ttl)
        )

    def dump_bytes(self, http: Any = None, **options: Any) -> Tuple[bytes, Dict[str, Any]]:
        out = io.BytesIO()
        result = self.successResultOf(dumpload.dump(http or self.http, URL, out, **options))
        return out.getvalue(), result

    def load_bytes(self, data: bytes, http: Any = None, **options: Any) -> Dict[str, Any]:
        options.setdefault("clock", self.clock)
        d = dumpload.load(http or self.target_http, URL, io.BytesIO(data), **options)
        return self.successResultOf(d)

    def rows(self, store: MemoryStore) -> Dict[str, Tuple[bytes, str, Optional[float]]]:
        return {k: (e.value, e.content_type, e.expires) for k, e in store.rows.items()}


class RecordTests(SynchronousTestCase):
    """parse_record and record_line: the line format."""

    def test_json_record(self) -> None:
        """A JSON value is stored as compact JSON, application/json by default."""
        self.assertEqual(
            parse_record(b'{"key": "a", "value": {"x": [1, 2.5, "\\u00e9"]}}\n', 1),
            Record("a", '{"x":[1,2.5,"\u00e9"]}'.encode("utf-8"), "application/json", None),
        )

    def test_base64_record(self) -> None:
        """value_base64 is the exact bytes, application/octet-stream by default."""
        self.assertEqual(
            parse_record(line(key="b", value_base64="AP8="), 1),
            Record("b", b"\x00\xff", "application/octet-stream", None),
        )

    def test_expires(self) -> None:
        """expires is RFC 3339 with Z or an offset, read as epoch seconds."""
        for text in ("2030-01-01T00:00:00.000Z", "2030-01-01T01:00:00+01:00"):
            record = parse_record(line(key="k", value=1, expires=text), 1)
            self.assertEqual(record.expires, 1893456000.0)

    def test_blank_line(self) -> None:
        """A blank line is no record (and no error)."""
        self.assertIsNone(parse_record(b"  \n", 3))

    def test_bad_lines(self) -> None:
        """Each kind of bad line is a DumpFormatError naming the line."""
        bad = [
            b"{not json}",
            b'{"key": "a", "value": NaN}',
            b'{"key": "a", "key": "b", "value": 1}',
            b"\xff\xfe",
            b'["key", "a"]',
            b'{"value": 1}',
            b'{"key": "", "value": 1}',
            b'{"key": 7, "value": 1}',
            b'{"key": "a"}',
            b'{"key": "a", "value": 1, "value_base64": "AA=="}',
            b'{"key": "a", "value_base64": "not base64!"}',
            b'{"key": "a", "value_base64": 12}',
            b'{"key": "a", "value": 1, "content_type": ""}',
            b'{"key": "a", "value": 1, "content_type": "caf\\u00e9"}',
            b'{"key": "a", "value": 1, "expires": 12}',
            b'{"key": "a", "value": 1, "expires": "2030-01-01T00:00:00"}',
            b'{"key": "a", "value": 1, "expires": "tomorrow"}',
        ]
        for data in bad:
            with self.assertRaises(DumpFormatError, msg=data) as raised:
                parse_record(data, 42)
            self.assertEqual(raised.exception.line, 42)
            self.assertTrue(str(raised.exception).startswith("line 42: "))

    def test_record_line(self) -> None:
        """record_line writes the four fields, inline JSON or base64."""
        item = {"key": "a", "value": {"x": 1}, "content_type": "application/json",
                "expires": None, "size": 7, "mod_revision": 3}
        self.assertEqual(
            json.loads(dumpformat.record_line(item)),
            {"key": "a", "value": {"x": 1}, "content_type": "application/json", "expires": None},
        )
        self.assertEqual(
            json.loads(dumpformat.record_line(item, exact_value=b'{"x": 1}')),
            {"key": "a", "value_base64": base64.b64encode(b'{"x": 1}').decode(),
             "content_type": "application/json", "expires": None},
        )

    def test_scan(self) -> None:
        """scan counts lines and records, rewinds, and names the first bad line."""
        source = io.BytesIO(json_record("a", 1) + b"\n" + json_record("b", 2))
        source.read(3)
        self.assertEqual(dumpload.scan(source), {"lines": 3, "records": 2})
        self.assertEqual(source.tell(), 0)
        with self.assertRaises(DumpFormatError) as raised:
            dumpload.scan(io.BytesIO(json_record("a", 1) + b"oops\n"))
        self.assertEqual(raised.exception.line, 2)


class DumpTests(MemoryTestCase):
    """dump: every key, at one revision."""

    def test_round_trip(self) -> None:
        """
        dump then load reproduces keys, values, content types and expiries,
        through several listing pages and several transactions.
        """
        self.put("flags/beta", b"true")
        self.put("config", b'{"a": [1, 2]}')
        self.put("logo", b"\x89PNG\x00\xff", "image/png")
        self.put("text", "caf\u00e9".encode("utf-8"), "text/plain; charset=utf-8")
        self.put("caf\u00e9/a b%/..", b"1")
        self.put("session", b'"s"', ttl=300)
        data, result = self.dump_bytes(page_size=2)
        self.assertEqual(result, {"keys": 6, "revision": 6, "attempts": 1})
        keys = [json.loads(l)["key"] for l in data.splitlines()]
        self.assertEqual(keys, sorted(keys, key=lambda k: k.encode("utf-8")))
        loaded = self.load_bytes(data, batch=4)
        self.assertEqual((loaded["loaded"], loaded["transactions"]), (6, 2))
        source, target = self.rows(self.store), self.rows(self.target)
        # Spacing is not kept for JSON values: compact JSON, equal as JSON.
        self.assertEqual(target.pop("config"), (b'{"a":[1,2]}', "application/json", None))
        source.pop("config")
        self.assertEqual(target, source)
        self.assertEqual(target["session"][2], NOW + 300)

    def test_prefix(self) -> None:
        """--prefix dumps only the keys under it."""
        self.put("a/1", b"1")
        self.put("b/1", b"2")
        data, result = self.dump_bytes(prefix="a/")
        self.assertEqual([json.loads(l)["key"] for l in data.splitlines()], ["a/1"])
        self.assertEqual(result["keys"], 1)

    def test_empty_store(self) -> None:
        """An empty store dumps to nothing, at revision 0."""
        data, result = self.dump_bytes()
        self.assertEqual((data, result), (b"", {"keys": 0, "revision": 0, "attempts": 1}))

    def test_exact(self) -> None:
        """With exact, JSON values keep their exact bytes (base64)."""
        self.put("config", b'{"a":  1e3}')
        data, _ = self.dump_bytes(exact=True)
        record = json.loads(data)
        self.assertEqual(base64.b64decode(record["value_base64"]), b'{"a":  1e3}')
        self.load_bytes(data)
        self.assertEqual(self.target.rows["config"].value, b'{"a":  1e3}')

    def test_restart_when_a_commit_lands_between_pages(self) -> None:
        """
        A commit between two listing pages makes the dump read the listing
        again: what it writes is the store at the later revision, whole.
        """
        self.without_history()
        for key in ("a", "b", "c", "d"):
            self.put(key, b"1")
        lists = []

        def hook(method: str, url: str) -> None:
            if "/v1/kv/?" in url:
                lists.append(url)
                if len(lists) == 2:
                    self.store.commit([Put("a", b"2", "application/json")])

        data, result = self.dump_bytes(Hooked(self.http, hook), page_size=2)
        self.assertEqual(result, {"keys": 4, "revision": 5, "attempts": 2})
        self.assertEqual(json.loads(data.splitlines()[0])["value"], 2)

    def test_gives_up_on_a_store_that_keeps_changing(self) -> None:
        """
        If every listing sees a commit, the dump fails with a 409
        revision-changed after its attempts and writes nothing.
        """
        self.without_history()
        for key in ("a", "b", "c"):
            self.put(key, b"1")
        counter = [0]

        def hook(method: str, url: str) -> None:
            counter[0] += 1
            self.store.commit([Put("noise", b"%d" % counter[0], "application/json")])

        out = io.BytesIO()
        d = dumpload.dump(Hooked(self.http, hook), URL, out, page_size=1, attempts=3)
        error = self.failureResultOf(d, client.ConflictError).value
        self.assertEqual(error.code, "revision-changed")
        self.assertIn("3 listings", error.detail)
        self.assertEqual(out.getvalue(), b"")

    def test_exact_fetch_that_sees_a_newer_write_restarts(self) -> None:
        """
        With exact, a value whose ETag is newer than the listing's revision
        makes the attempt start again, so no value from a later revision
        slips into the dump.
        """
        self.without_history()
        self.put("a", b"1")
        gets = []

        def hook(method: str, url: str) -> None:
            if url.endswith("/v1/kv/a"):
                gets.append(url)
                if len(gets) == 1:
                    self.store.commit([Put("a", b"2", "application/json")])

        data, result = self.dump_bytes(Hooked(self.http, hook), exact=True)
        self.assertEqual(result["attempts"], 2)
        self.assertEqual(base64.b64decode(json.loads(data)["value_base64"]), b"2")

    def test_pause_between_attempts(self) -> None:
        """With a clock, the second attempt waits FIRST_PAUSE seconds."""
        self.without_history()
        self.put("a", b"1")
        self.put("b", b"1")
        lists = []

        def hook(method: str, url: str) -> None:
            lists.append(url)
            if len(lists) == 2:
                self.store.commit([Put("c", b"1", "application/json")])

        out = io.BytesIO()
        d = dumpload.dump(Hooked(self.http, hook), URL, out, page_size=1, clock=self.clock)
        self.assertNoResult(d)
        self.clock.advance(dumpload.FIRST_PAUSE)
        self.assertEqual(self.successResultOf(d)["attempts"], 2)

    def test_one_revision_while_writes_go_on(self) -> None:
        """
        On a store with history, commits between pages change nothing in
        the dump: every page is read at the first one's revision, in one
        attempt; with exact, the values too.
        """
        for key in ("a", "b", "c", "d"):
            self.put(key, b"1")

        requests = []

        def hook(method: str, url: str) -> None:
            # After the first page (read before this hook's first commit).
            requests.append(url)
            if len(requests) > 1:
                self.store.commit([Put("a", b"2", "application/json"), Put("e", b"2")])

        for exact in (False, True):
            requests.clear()
            before = {key: entry.value for key, entry in self.store.rows.items()}
            data, result = self.dump_bytes(Hooked(self.http, hook), page_size=1, exact=exact)
            self.assertEqual((result["keys"], result["attempts"]), (len(before), 1))
            dumped = {}
            for line in data.splitlines():
                record = json.loads(line)
                dumped[record["key"]] = (
                    base64.b64decode(record["value_base64"]) if exact
                    else json.dumps(record["value"]).encode()
                )
            self.assertEqual(dumped, before)

    def test_pauses_are_capped(self) -> None:
        """The pause between tries doubles from FIRST_PAUSE up to MAX_PAUSE, never more."""
        pauses = [dumpload.pause_before(n) for n in range(1, 40)]
        self.assertEqual(pauses[:3], [dumpload.FIRST_PAUSE, 2 * dumpload.FIRST_PAUSE, 4 * dumpload.FIRST_PAUSE])
        self.assertEqual(max(pauses), dumpload.MAX_PAUSE)
        self.assertEqual(pauses, sorted(pauses))

    def test_bad_arguments(self) -> None:
        """Bad arguments raise at once."""
        with self.assertRaises(ValueError):
            dumpload.dump(self.http, URL, io.BytesIO(), attempts=0)
        with self.assertRaises(ValueError):
            dumpload.dump(self.http, URL, io.BytesIO(), page_size=0)

    def test_error_answer(self) -> None:
        """An error answer (here a page size over the server's cap) fails the dump."""
        d = dumpload.dump(self.http, URL, io.BytesIO(), page_size=100000)
        self.assertEqual(self.failureResultOf(d, client.KVClientError).value.status, 400)


class LoadTests(MemoryTestCase):
    """load: one batch request per commit, TTLs, idempotence, retries."""

    def records(self, count: int, prefix: str = "k/") -> bytes:
        return b"".join(json_record("%s%04d" % (prefix, i), i) for i in range(count))

    def test_batches_are_commits(self) -> None:
        """Each batch is one commit of its keys."""
        result = self.load_bytes(self.records(7), batch=3)
        self.assertEqual(
            result,
            {"lines": 7, "records": 7, "loaded": 7, "expired": 0, "transactions": 3,
             "resumed_at_line": 0, "revision": 3},
        )
        self.assertEqual([len(ops) for ops in self.target.commits], [3, 3, 1])

    def test_idempotent(self) -> None:
        """Loading the same input twice leaves the same keys and values."""
        data = self.records(5)
        self.load_bytes(data, batch=2)
        first = {k: v[:2] for k, v in self.rows(self.target).items()}
        self.load_bytes(data, batch=2)
        self.assertEqual({k: v[:2] for k, v in self.rows(self.target).items()}, first)

    def test_other_keys_untouched(self) -> None:
        """Keys the input does not name are left alone."""
        self.successResultOf(client.put(self.target_http, URL, "mine", b"x"))
        self.load_bytes(self.records(2))
        self.assertEqual(self.target.rows["mine"].value, b"x")

    def test_ttl_left_and_expired_skipped(self) -> None:
        """A key gets the TTL left of its expiry; an expired one is skipped."""
        data = line(key="later", value=1, expires="2030-03-17T17:46:40.000Z") + line(
            key="gone", value=1, expires="2000-01-01T00:00:00.000Z"
        )
        self.clock.advance(-NOW + 1_900_000_000 - 100)  # 100 s before the expiry
        result = self.load_bytes(data)
        self.assertEqual((result["loaded"], result["expired"]), (1, 1))
        self.assertEqual(self.target.rows["later"].expires, 1_900_000_000.0)
        self.assertNotIn("gone", self.target.rows)

    def test_last_record_of_a_key_wins(self) -> None:
        """A key twice in one batch ends with the later value."""
        self.load_bytes(json_record("k", 1) + json_record("k", 2), batch=10, concurrency=4)
        self.assertEqual(self.target.rows["k"].value, b"2")

    def test_unavailable_retried(self) -> None:
        """A batch refused with 503 (store unavailable) is sent again after a pause."""
        batches = []

        def hook(method: str, url: str) -> None:
            if url.endswith("/v1/batch"):
                batches.append(url)
                self.target.fail_commits = (
                    StoreUnavailable("briefly gone") if len(batches) == 1 else None)

        d = dumpload.load(Hooked(self.target_http, hook), URL, io.BytesIO(self.records(2)),
                          clock=self.clock)
        self.assertNoResult(d)
        self.clock.advance(dumpload.FIRST_PAUSE)
        self.assertEqual(self.successResultOf(d)["loaded"], 2)
        self.assertEqual(self.target.rows["k/0000"].value, b"0")
        self.assertEqual(len(batches), 2)

    def test_unavailable_past_retries(self) -> None:
        """With no retries left, the 503 is the load's error."""
        self.target.fail_commits = StoreUnavailable("gone")
        d = dumpload.load(self.target_http, URL, io.BytesIO(self.records(1)),
                          retries=0, clock=self.clock)
        self.assertEqual(self.failureResultOf(d, client.KVClientError).value.status, 503)

    def test_batches_fit_the_servers_limits(self) -> None:
        """
        A batch holds at most the server's max_batch_ops ops and max_body
        bytes (/v1/limits): more keys than that are split in several
        commits, and a value too big for any batch body is written alone
        with a PUT, in input order.
        """
        http, store = memory_client(MemoryStore(clock=self.clock),
                                    limits=Limits(max_body=4096, max_batch_ops=3))
        big = base64.b64encode(b"x" * 3500).decode("ascii")
        data = (self.records(4) + line(key="big", value_base64=big, content_type="text/plain")
                + self.records(2, prefix="z/"))
        result = self.load_bytes(data, http=http, batch=1000)
        self.assertEqual([len(ops) for ops in store.commits], [3, 1, 1, 2])
        self.assertEqual((result["loaded"], result["transactions"]), (7, 4))
        self.assertEqual(store.rows["big"].value, b"x" * 3500)

    def test_bad_line_mid_file(self) -> None:
        """A bad line fails the load there; the batches before it are in."""
        data = self.records(2) + b"oops\n"
        d = dumpload.load(self.target_http, URL, io.BytesIO(data), batch=2, clock=self.clock)
        self.assertEqual(self.failureResultOf(d, DumpFormatError).value.line, 3)
        self.assertEqual(len(self.target.rows), 2)

    def test_failed_staging_aborts(self) -> None:
        """A refused write refuses its whole batch: nothing of it is applied."""
        data = json_record("ok", 1) + json_record("x" * 2000, 2)
        d = dumpload.load(self.target_http, URL, io.BytesIO(data), clock=self.clock)
        self.assertEqual(self.failureResultOf(d, client.KVClientError).value.status, 400)
        self.assertEqual(self.target.rows, {})

    def test_progress(self) -> None:
        """on_progress hears of every record, batch by batch."""
        seen: List[int] = []
        self.load_bytes(self.records(5), batch=2, on_progress=seen.append)
        self.assertEqual(seen, [2, 2, 1])

    def test_bad_arguments(self) -> None:
        """Bad batch, retries or concurrency raise at once."""
        for options in ({"batch": 0}, {"retries": -1}, {"concurrency": 0}, {"batch": True}):
            with self.assertRaises(ValueError):
                dumpload.load(self.target_http, URL, io.BytesIO(b""), **options)


class ResumeTests(MemoryTestCase):
    """load's checkpoint: resume where a failed load stopped."""

    def setUp(self) -> None:
        super().setUp()
        self.input = os.path.join(self.dir, "dump.jsonl")
        with open(self.input, "wb") as f:
            for i in range(10):
                f.write(json_record("k/%02d" % i, i))
                if i == 4:
                    f.write(b"\n")  # a blank line, counted but no record
        self.checkpoint = self.input + ".checkpoint"

        self.http_for_load: Any = self.target_http

    def load_file(self, **options: Any) -> Deferred:
        options.setdefault("clock", self.clock)
        source = open(self.input, "rb")
        self.addCleanup(source.close)
        return dumpload.load(self.http_for_load, URL, source, batch=3,
                             checkpoint=self.checkpoint, **options)

    def fail_after(self, commits: int) -> None:
        """Make the target's store refuse (503) every commit after the first C{commits}."""

        def hook(method: str, url: str) -> None:
            if url.endswith("/v1/batch") and len(self.target.commits) >= commits:
                self.target.fail_commits = StoreUnavailable("the disk is gone")

        self.http_for_load = Hooked(self.target_http, hook)

    def restore(self) -> None:
        """The store works again."""
        self.http_for_load = self.target_http
        self.target.fail_commits = None

    def test_resume_after_failure(self) -> None:
        """
        A load that fails after two batches leaves a checkpoint after their
        lines; the same load run again starts there and finishes, and then
        removes the checkpoint.
        """
        self.fail_after(2)
        failure = self.failureResultOf(self.load_file(retries=0), client.KVClientError)
        self.assertEqual(failure.value.status, 503)
        with open(self.checkpoint) as f:
            state = json.load(f)
        # Six records on seven lines: the blank line is line 6.
        self.assertEqual((state["lines"], state["records"], state["url"]), (7, 6, URL))
        self.assertEqual(sorted(self.target.rows), ["k/%02d" % i for i in range(6)])

        self.restore()
        progress: List[int] = []
        result = self.successResultOf(self.load_file(on_progress=progress.append))
        self.assertEqual(
            result,
            {"lines": 11, "records": 10, "loaded": 4, "expired": 0, "transactions": 2,
             "resumed_at_line": 7, "revision": 4},
        )
        self.assertEqual(progress, [6, 3, 1])
        self.assertEqual(sorted(self.target.rows), ["k/%02d" % i for i in range(10)])
        self.assertFalse(os.path.exists(self.checkpoint))

    def test_checkpoint_for_other_input(self) -> None:
        """A checkpoint whose lines differ from the input is refused at once."""
        self.fail_after(1)
        self.failureResultOf(self.load_file(retries=0), client.KVClientError)
        self.restore()
        with open(self.input, "r+b") as f:
            f.write(b'{"key": "X/')  # same length, other first line
        with self.assertRaises(CheckpointMismatch):
            self.load_file()
        # --restart ignores it, loads everything and removes it.
        result = self.successResultOf(self.load_file(restart=True))
        self.assertEqual((result["resumed_at_line"], result["loaded"]), (0, 10))
        self.assertFalse(os.path.exists(self.checkpoint))

    def test_checkpoint_for_other_server(self) -> None:
        """A checkpoint written loading into another URL is refused at once."""
        dumpload.Checkpoint(self.checkpoint).write(
            {"url": "http://elsewhere", "lines": 0, "sha256": "", "records": 0}
        )
        with self.assertRaises(CheckpointMismatch) as raised:
            self.load_file()
        self.assertIn("http://elsewhere", str(raised.exception))

    def test_not_a_checkpoint(self) -> None:
        """A file that is not a checkpoint is refused, not overwritten."""
        with open(self.checkpoint, "w") as f:
            f.write("my notes")
        with self.assertRaises(CheckpointMismatch):
            self.load_file()
        with open(self.checkpoint) as f:
            self.assertEqual(f.read(), "my notes")

    def test_checkpoint_written_atomically(self) -> None:
        """Checkpoints are renamed into place: no temporary file is left."""
        self.fail_after(1)
        self.failureResultOf(self.load_file(retries=0), client.KVClientError)
        self.assertEqual(sorted(os.listdir(self.dir)), ["dump.jsonl", "dump.jsonl.checkpoint"])


class GlueTests(MemoryTestCase):
    """The command glue (L{kvtwist.cli.commands.dumpload}): C{kvtwist dump} and C{kvtwist load} through L{kvtwist.cli.main}."""

    def setUp(self) -> None:
        super().setUp()
        # The glue reads the time from the reactor it is given.
        self.store.clock = self.target.clock = self.clock

    def run_main(self, *argv: str, http: Any = None, code: int = 0,
                 stdin: Optional[bytes] = None) -> Tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        from kvtwist import cli

        d = cli.main(
            self.clock, "--url", URL, *argv, http=http or self.http, stdout=out, stderr=err,
            environ={}, stdin=io.BytesIO(stdin) if stdin is not None else None,
        )
        if code:
            self.assertEqual(self.failureResultOf(d, SystemExit).value.code, code,
                             err.getvalue())
        else:
            self.assertIsNone(self.successResultOf(d), err.getvalue())
        return out.getvalue(), err.getvalue()

    def test_dump_to_stdout_and_load_from_stdin(self) -> None:
        """dump with no FILE writes the lines to stdout; load - reads stdin."""
        self.put("a", b"1")
        self.put("b", b"\x00", "application/octet-stream")
        out, err = self.run_main("dump")
        self.assertEqual(err, "kvtwist: dumped 2 keys at revision 2\n")
        self.assertEqual([json.loads(l)["key"] for l in out.splitlines()], ["a", "b"])
        out, err = self.run_main("load", http=self.target_http, stdin=out.encode("utf-8"))
        self.assertEqual(json.loads(out)["loaded"], 2)
        self.assertEqual(self.rows(self.target), self.rows(self.store))
        self.assertEqual(err, "")  # no progress bar: stderr is no terminal

    def test_dump_to_file(self) -> None:
        """dump FILE writes the file (mode 0600) whole, and reports on stdout."""
        self.put("a", b"1")
        path = os.path.join(self.dir, "out.jsonl")
        out, _ = self.run_main("-o", "text", "dump", path)
        self.assertEqual(out, "dumped 1 keys at revision 1 to %s\n" % (path,))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.dir), ["out.jsonl"])
        out, _ = self.run_main("dump", path)
        self.assertEqual(json.loads(out), {"keys": 1, "revision": 1, "attempts": 1, "file": path})

    def test_failed_dump_leaves_file_alone(self) -> None:
        """A dump that fails does not touch FILE and leaves no temp file."""
        path = os.path.join(self.dir, "out.jsonl")
        with open(path, "w") as f:
            f.write("previous\n")
        self.store.closed = True
        _, err = self.run_main("dump", path, code=1)
        self.assertIn("503", err)
        with open(path) as f:
            self.assertEqual(f.read(), "previous\n")
        self.assertEqual(os.listdir(self.dir), ["out.jsonl"])

    def test_load_text_and_progress(self) -> None:
        """load --progress draws a bar on stderr; text output sums up."""
        path = os.path.join(self.dir, "in.jsonl")
        with open(path, "wb") as f:
            f.write(json_record("a", 1) + json_record("b", 2))
        out, err = self.run_main("-o", "text", "load", path, "--batch", "1", "--progress",
                                 http=self.target_http)
        self.assertEqual(out, "loaded 2 keys in 2 transactions (revision 2)\n")
        self.assertIn("2/2", err)
        self.assertFalse(os.path.exists(path + ".checkpoint"))

    def test_bad_input_sends_nothing(self) -> None:
        """A bad line anywhere in the input is exit 2 before any request."""
        path = os.path.join(self.dir, "in.jsonl")
        with open(path, "wb") as f:
            f.write(json_record("a", 1) + b"{broken\n")
        hooked = Hooked(self.target_http, lambda method, url: None)
        _, err = self.run_main("load", path, http=hooked, code=2)
        self.assertIn("line 2: not strict JSON", err)
        self.assertEqual(hooked.requests, [])

    def test_missing_input(self) -> None:
        """An input file that cannot be read is exit 2."""
        _, err = self.run_main("load", os.path.join(self.dir, "nope"), code=2)
        self.assertIn("cannot read", err)

    def test_conflict_exit_code(self) -> None:
        """A dump that never sees a quiet store exits 4 (conflict)."""
        self.without_history()
        self.put("a", b"1")
        self.put("b", b"1")

        def hook(method: str, url: str) -> None:
            self.store.commit([Put("noise", b"1", "application/json")])

        _, err = self.run_main("dump", "--page-size", "1", "--attempts", "1",
                               http=Hooked(self.http, hook), code=4)
        self.assertIn("409 revision-changed", err)

    def test_cli_parser_factory(self) -> None:
        """
        With the kvtwist CLI's subcommand factory, the subcommands are made
        by it (and so get its hidden global options).
        """
        from kvtwist.cli.commands import dumpload as dumpload_commands
        from kvtwist.cli.parser import Parser

        out, err = io.StringIO(), io.StringIO()
        parser = Parser(prog="kvtwist", out=out, err=err)
        commands = parser.add_subparsers(dest="command")
        made = []

        def command(name: str, help_text: str, epilog: str = "") -> Any:
            made.append(name)
            return commands.add_parser(name, help=help_text, out=out, err=err)

        dumpload_commands.add_commands(command)
        self.assertEqual(made, ["dump", "load"])
        args = parser.parse_args(["load", "f", "--batch", "5", "--no-progress"])
        self.assertEqual((args.file, args.batch, args.progress), ("f", 5, False))
        args = parser.parse_args(["dump", "--prefix", "a/", "--exact"])
        self.assertEqual((args.file, args.prefix, args.exact), ("-", "a/", True))

    def test_wired_into_kvtwist_cli(self) -> None:
        """
        Once kvtwist.cli has the dump and load commands, `kvtwist dump` and
        `kvtwist load` run this module's handlers.
        """
        from kvtwist import cli

        help_out = io.StringIO()
        self.successResultOf(cli.main(self.clock, "--help", http=self.http, stdout=help_out,
                                      stderr=io.StringIO(), environ={}))
        if "dump" not in help_out.getvalue():
            self.skipTest("kvtwist.cli does not have the dump and load commands yet")
        self.put("a", b"1")
        out, err = io.StringIO(), io.StringIO()
        d = cli.main(self.clock, "--url", URL, "dump", http=self.http,
                     stdout=out, stderr=err, environ={})
        self.assertIsNone(self.successResultOf(d), err.getvalue())
        self.assertEqual(json.loads(out.getvalue())["key"], "a")


# -- end to end ------------------------------------------------------------------


def dumpload_command(url: str, *args: str) -> List[str]:
    """The command line of `kvtwist --url URL ARGS` (the console script's entry point, run with -b)."""
    return [sys.executable, "-b", "-c", "from kvtwist.cli import run; run()", "--url", url] + list(args)


def run_command(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        dumpload_command(url, *args), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout,
    )


class EndToEndTests(SynchronousTestCase):
    """The commands as subprocesses against the real twistd kvcache."""

    def setUp(self) -> None:
        self.dir = temp_dir(self, "dumpload")

    def seed(self, url: str) -> None:
        """A few keys of each kind, with plain blocking HTTP."""
        from tests.helpers.e2e import http_request

        for key, value, content_type, query in [
            ("flags/beta", b"true", "application/json", ""),
            ("config", b'{"mode": "fast"}', "application/json", ""),
            ("logo", b"\x89PNG\x00\xff", "image/png", ""),
            ("caf%C3%A9", b"x", "text/plain", ""),
            ("session", b'"s"', "application/json", "?ttl=600"),
        ]:
            status, _, body = http_request(url, "PUT", "/v1/kv/" + key + query, value,
                                           {"Content-Type": content_type})
            self.assertIn(status, (200, 201), body)

    def records(self, path: str) -> List[Dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            return [json.loads(l) for l in f]

    def test_dump_and_load_between_servers(self) -> None:
        """
        dump from one real server and load into another: the second holds
        the same keys, values, content types and (to the second) expiries.
        """
        source = start_server(self, os.path.join(self.dir, "a"))
        target = start_server(self, os.path.join(self.dir, "b"))
        self.seed(source.url)
        first = os.path.join(self.dir, "first.jsonl")
        result = run_command(source.url, "dump", first)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["keys"], 5)
        result = run_command(target.url, "load", first)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["loaded"], 5)
        second = os.path.join(self.dir, "second.jsonl")
        self.assertEqual(run_command(target.url, "dump", second).returncode, 0)
        before, after = self.records(first), self.records(second)

        def expiry(record: Dict[str, Any]) -> Optional[float]:
            text = record.pop("expires")
            return None if text is None else wire.parse_rfc3339(text)

        for old, new in zip(before, after):
            old_expiry, new_expiry = expiry(old), expiry(new)
            if old_expiry is None:
                self.assertIsNone(new_expiry)
            else:
                # The TTL left when it was loaded: the same moment, give or
                # take the time between the reads.
                self.assertLess(abs(old_expiry - new_expiry), 30)
        self.assertEqual(after, before)

    def test_interrupted_load_resumes(self) -> None:
        """
        A load killed with SIGKILL half way leaves a checkpoint and only
        whole batches on the server; run again, it resumes after the
        checkpointed lines and the server ends with every key.
        """
        server = start_server(self, os.path.join(self.dir, "data"))
        path = os.path.join(self.dir, "big.jsonl")
        total, batch = 400, 10
        with open(path, "wb") as f:
            for i in range(total):
                f.write(json_record("bulk/%04d" % i, {"i": i}))
        checkpoint = path + ".checkpoint"
        loader = subprocess.Popen(
            dumpload_command(server.url, "load", path, "--batch", str(batch),
                             "--concurrency", "1"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: loader.poll() is None and loader.kill())
        state = None
        deadline = time.monotonic() + 60
        # Bounded by the deadline and a count: poll for the first checkpoint.
        for _ in range(12000):
            if time.monotonic() > deadline or loader.poll() is not None:
                break
            try:
                with open(checkpoint) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = None
            if state is not None and state["lines"] >= 2 * batch:
                loader.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        loader.wait(timeout=30)
        self.assertEqual(loader.returncode, -signal.SIGKILL, "the load ended before the kill")
        with open(checkpoint) as f:
            state = json.load(f)
        done = state["lines"]
        self.assertTrue(0 < done < total and done % batch == 0, state)

        listing = self.list_keys(server.url)
        # Whole batches only, and at least those the checkpoint counts (one
        # more may have committed before its checkpoint was written).
        self.assertEqual(len(listing) % batch, 0)
        self.assertGreaterEqual(len(listing), done)
        self.assertEqual(listing, ["bulk/%04d" % i for i in range(len(listing))])

        result = run_command(server.url, "load", path, "--batch", str(batch))
        self.assertEqual(result.returncode, 0, result.stderr)
        summary = json.loads(result.stdout)
        self.assertEqual(summary["resumed_at_line"], done)
        self.assertEqual((summary["lines"], summary["records"]), (total, total))
        self.assertEqual(summary["loaded"], total - done)
        self.assertFalse(os.path.exists(checkpoint))
        self.assertEqual(self.list_keys(server.url), ["bulk/%04d" % i for i in range(total)])
        dumped = os.path.join(self.dir, "after.jsonl")
        self.assertEqual(run_command(server.url, "dump", dumped).returncode, 0)
        with open(dumped, "rb") as f, open(path, "rb") as g:
            self.assertEqual(f.read(), g.read().replace(b" ", b""))

    def wait_for(self, process: subprocess.Popen, ready: Callable[[], bool]) -> None:
        """Poll C{ready} (bounded in time and count) while C{process} runs."""
        deadline = time.monotonic() + 60
        for _ in range(12000):
            if time.monotonic() > deadline or process.poll() is not None:
                break
            if ready():
                return
            time.sleep(0.005)
        self.fail("the command ended (or hung) before it could be interrupted")

    def test_load_interrupted_by_sigint(self) -> None:
        """
        SIGINT half way through a load: exit 130, "interrupted; run again
        to resume" on stderr, the checkpoint kept and no temporary file
        left; the same command run again resumes there and finishes.
        """
        server = start_server(self, os.path.join(self.dir, "data"))
        path = os.path.join(self.dir, "in.jsonl")
        total, batch = 2000, 5
        with open(path, "wb") as f:
            for i in range(total):
                f.write(json_record("bulk/%04d" % i, i))
        checkpoint = path + ".checkpoint"
        loader = subprocess.Popen(
            dumpload_command(server.url, "load", path, "--batch", str(batch)),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: loader.poll() is None and loader.kill())
        self.wait_for(loader, lambda: os.path.exists(checkpoint))
        loader.send_signal(signal.SIGINT)
        out, err = loader.communicate(timeout=30)
        self.assertEqual(loader.returncode, 130, err)
        self.assertEqual(err.strip().splitlines()[-1], "kvtwist: interrupted; run again to resume")
        self.assertEqual(out, "")
        self.assertEqual(sorted(os.listdir(self.dir)), ["data", "in.jsonl", "in.jsonl.checkpoint"])
        with open(checkpoint) as f:
            done = json.load(f)["lines"]
        self.assertTrue(0 < done < total, done)

        result = run_command(server.url, "load", path, "--batch", "500")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["resumed_at_line"], done)
        self.assertEqual(len(self.list_keys(server.url)), total)

    def test_dump_interrupted_by_sigterm(self) -> None:
        """
        SIGTERM during a dump to FILE: exit 143, "interrupted; FILE was left
        as it was", no FILE and no temporary file left behind.
        """
        server = start_server(self, os.path.join(self.dir, "data"))
        source = os.path.join(self.dir, "in.jsonl")
        with open(source, "wb") as f:
            for i in range(300):
                f.write(json_record("k/%04d" % i, i))
        self.assertEqual(run_command(server.url, "load", source).returncode, 0)
        os.unlink(source)
        path = os.path.join(self.dir, "out.jsonl")
        # One key per page and a read per key: slow enough to interrupt.
        dumper = subprocess.Popen(
            dumpload_command(server.url, "dump", path, "--page-size", "1", "--exact"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.addCleanup(lambda: dumper.poll() is None and dumper.kill())
        self.wait_for(dumper, lambda: any(n.startswith(".out.jsonl.") for n in os.listdir(self.dir)))
        time.sleep(0.2)
        dumper.send_signal(signal.SIGTERM)
        out, err = dumper.communicate(timeout=30)
        self.assertEqual(dumper.returncode, 143, err)
        self.assertEqual(err.strip(), "kvtwist: interrupted; %s was left as it was" % (path,))
        self.assertEqual(os.listdir(self.dir), ["data"])

    def list_keys(self, url: str) -> List[str]:
        from tests.helpers.e2e import http_request

        keys: List[str] = []
        after = ""
        for _ in range(100):
            query = "/v1/kv/?limit=1000" + ("&after=" + after if after else "")
            status, _, body = http_request(url, "GET", query)
            self.assertEqual(status, 200, body)
            page = json.loads(body)
            keys.extend(item["key"] for item in page["items"])
            if page["next"] is None:
                return keys
            after = page["next"]
        raise AssertionError("the listing did not end")
