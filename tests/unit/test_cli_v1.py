"""
Tests for the C{kvtwist} commands of the v1 API (L{kvtwist.cli.commands.kv}):
put, cat, get of text values, rm, list, batch, incr and txn.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import client, wire
from kvtwist.cli import main
from kvtwist.model import Put

from tests.helpers.client import AWKWARD_KEYS, FailAfter, Interloper
from tests.helpers.cli import PROJECT, Failing, V1CLITestCase


class PutCommandTests(V1CLITestCase):
    """kvtwist put."""

    def test_put_value(self) -> None:
        """put KEY VALUE stores VALUE's UTF-8 bytes and prints the result as JSON."""
        result = self.json_out("put", "a/b c", "caf\u00e9")
        self.assertEqual(
            result,
            {"key": "a/b c", "revision": 1, "created": True, "version": 1, "etag": '"1"',
             "mod_revision": 1, "expires": None},
        )
        entry = self.store.rows["a/b c"]
        self.assertEqual((entry.value, entry.content_type),
                         ("caf\u00e9".encode("utf-8"), "application/octet-stream"))

    def test_put_text_output(self) -> None:
        """--output text prints 'created KEY (revision N)', then 'updated ...'."""
        self.assertEqual(self.cli("-o", "text", "put", "k", "1"), ("created k (revision 1)\n", ""))
        self.assertEqual(self.cli("put", "k", "2", "-o", "text")[0], "updated k (revision 2)\n")

    def test_put_from_stdin(self) -> None:
        """put KEY - stores stdin's bytes exactly, binary included."""
        self.cli("put", "bin", "-", stdin=b"\x00\xff\r\n")
        self.assertEqual(self.store.rows["bin"].value, b"\x00\xff\r\n")
        self.cli("put", "bin2", "--file", "-", stdin=b"\x01")
        self.assertEqual(self.store.rows["bin2"].value, b"\x01")

    def test_put_from_file(self) -> None:
        """put KEY --file F stores the file's bytes."""
        self.cli("put", "f", "--file", self.file(b"\xfe file \x00"))
        self.assertEqual(self.store.rows["f"].value, b"\xfe file \x00")

    def test_put_value_sources_are_exclusive(self) -> None:
        """No value, or VALUE with --file, or an unreadable file exits 2 and sends nothing."""
        out, err = self.cli("put", "k", code=2)
        self.assertEqual(err, "kvtwist: put needs a VALUE, - (stdin) or --file FILE\n")
        out, err = self.cli("put", "k", "v", "--file", self.file(b"x"), code=2)
        self.assertEqual(err, "kvtwist: put takes either VALUE or --file, not both\n")
        missing = self.mktemp()
        out, err = self.cli("put", "k", "--file", missing, code=2)
        self.assertEqual(err, "kvtwist: cannot read %s: No such file or directory\n" % (missing,))
        self.assertEqual(self.store.commits, [])

    def test_put_content_type_and_json(self) -> None:
        """--content-type is stored; --json checks the value and stores application/json."""
        self.cli("put", "t", "hi", "--content-type", "text/plain; charset=utf-8")
        self.assertEqual(self.store.rows["t"].content_type, "text/plain; charset=utf-8")
        self.cli("put", "j", '{"a": [1]}', "--json")
        self.assertEqual(
            (self.store.rows["j"].value, self.store.rows["j"].content_type),
            (b'{"a": [1]}', "application/json"),
        )
        self.cli("put", "j2", "-", "--json", stdin=b"[true]")
        self.assertEqual(self.store.rows["j2"].content_type, "application/json")

    def test_put_json_refuses_bad_json(self) -> None:
        """--json with a value that is not strict JSON (or not UTF-8) exits 2, nothing sent."""
        out, err = self.cli("put", "j", "hello", "--json", code=2)
        self.assertTrue(err.startswith("kvtwist: the value is not strict JSON"), err)
        out, err = self.cli("put", "j", "-", "--json", stdin=b"\xff", code=2)
        self.assertEqual(err, "kvtwist: the value is not strict JSON: it is not UTF-8\n")
        self.cli("put", "j", "NaN", "--json", code=2)
        self.assertEqual(self.store.commits, [])

    def test_put_json_excludes_content_type(self) -> None:
        """--json and --content-type together are a usage error."""
        out, err = self.cli("put", "j", "1", "--json", "-t", "text/plain", code=2)
        self.assertIn("not allowed with argument", err)

    def test_put_bad_content_type(self) -> None:
        """A content type that cannot be a header exits 2."""
        out, err = self.cli("put", "k", "v", "-t", "caf\u00e9", code=2)
        self.assertTrue(err.startswith("kvtwist: content_type is non-empty printable ASCII"), err)

    def test_put_ttl(self) -> None:
        """--ttl makes the key expire, and shows the expiry; a bad TTL exits 2."""
        result = self.json_out("put", "k", "v", "--ttl", "90")
        self.assertEqual(result["expires"], "1970-01-01T00:01:30.000Z")
        self.cli("put", "half", "v", "--ttl", "0.5")
        self.assertEqual(self.store.rows["half"].expires, 0.5)
        for ttl in ("0", "-1", "soon", "inf", "nan"):
            out, err = self.cli("put", "k", "v", "--ttl", ttl, code=2)
            self.assertIn("--ttl", err)

    def test_put_if_match(self) -> None:
        """--if-match writes at the right revision; a stale one exits 4 and writes nothing."""
        self.cli("put", "k", "1")
        self.cli("put", "k", "2", "--if-match", "1")
        out, err = self.cli("put", "k", "3", "--if-match", '"1"', code=4)
        self.assertEqual(
            err,
            "kvtwist: 412 precondition-failed: If-Match did not hold for 'k' "
            "(its current revision is 2)\n",
        )
        self.assertEqual(out, "")
        self.assertEqual(self.store.rows["k"].value, b"2")
        self.cli("put", "absent", "x", "--if-match", "*", code=4)
        out, err = self.cli("put", "k", "4", "--if-match", "latest", code=2)
        self.assertTrue(err.startswith("kvtwist: if_match is a revision"), err)

    def test_put_if_none_match(self) -> None:
        """--if-none-match creates a key, and exits 4 if it exists."""
        self.cli("put", "lock", "me", "--if-none-match")
        self.cli("put", "lock", "you", "--if-none-match", code=4)
        self.assertEqual(self.store.rows["lock"].value, b"me")


class CatCommandTests(V1CLITestCase):
    """kvtwist cat."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "j", '{"a": "\u2603"}', "--json")
        self.cli("put", "bin", "-", stdin=b"\x00\xff\n")

    def test_cat_json(self) -> None:
        """cat prints the entry as JSON: JSON values inline, others base64, with revisions."""
        self.assertEqual(
            self.json_out("cat", "j"),
            {"key": "j", "create_revision": 1, "mod_revision": 1, "version": 1,
             "content_type": "application/json", "size": 12, "expires": None,
             "value": {"a": "\u2603"}, "revision": 2},
        )
        self.assertEqual(self.json_out("cat", "bin")["value_base64"], "AP8K")

    def test_cat_text_writes_exact_bytes(self) -> None:
        """--output text writes the value's bytes exactly, through stdout's buffer."""
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding="utf-8")
        stdout.write("before ")
        self.cli("-o", "text", "cat", "bin", stdout=stdout)
        stdout.flush()
        self.assertEqual(raw.getvalue(), b"before \x00\xff\n")

    def test_cat_text_without_buffer(self) -> None:
        """On a stream without a buffer, the value is written decoded, nothing added."""
        self.assertEqual(self.cli("-o", "text", "cat", "j"), ('{"a": "\u2603"}', ""))

    def test_cat_missing(self) -> None:
        """cat of an absent key exits 1."""
        out, err = self.cli("cat", "nope", code=1)
        self.assertEqual(err, "kvtwist: 404 key-not-found: no such key: 'nope'\n")

    def test_cat_reserved_and_awkward_keys(self) -> None:
        """cat reaches every key put, including set, commit and keys with '/', spaces, UTF-8."""
        for i, key in enumerate(AWKWARD_KEYS):
            self.cli("put", "--", key, str(i))
        for i, key in enumerate(AWKWARD_KEYS):
            self.assertEqual(self.cli("-o", "text", "cat", "--", key)[0], str(i), key)


class TextValueTests(V1CLITestCase):
    """Text values print as text in get, cat, list and batch outputs (client.text_of's rule)."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "app/x", "hello")
        self.cli("put", "app/lines", "-", stdin=b"one\ntwo\n", )
        self.cli("put", "app/latin", "-", "-t", "text/plain; charset=latin-1", stdin=b"caf\xe9")
        self.cli("put", "app/bin", "-", stdin=b"\x00\xff\n")

    def test_get_text(self) -> None:
        """get of a text value prints it: a JSON string, or the text with -o text."""
        self.assertEqual(self.json_out("get", "app/x"), "hello")
        self.assertEqual(self.cli("-o", "text", "get", "app/x"), ("hello\n", ""))
        self.assertEqual(self.cli("-o", "text", "get", "app/lines"), ("one\ntwo\n", ""))
        self.assertEqual(self.json_out("get", "app/latin"), "caf\u00e9")

    def test_get_binary(self) -> None:
        """get of bytes that are not text gives them as base64 with their type."""
        self.assertEqual(self.json_out("get", "app/bin"),
                         {"value_base64": "AP8K", "content_type": "application/octet-stream"})

    def test_get_json_unchanged(self) -> None:
        """get of a JSON value prints the JSON, a string without quotes with -o text."""
        self.cli("put", "j", '"s"', "--json")
        self.assertEqual(self.json_out("get", "j"), "s")
        self.assertEqual(self.cli("-o", "text", "get", "j"), ("s\n", ""))

    def test_get_json_type_that_is_not_strict_json(self) -> None:
        """get of a JSON-typed NaN prints strict JSON (the text as a string), never a bare NaN."""
        self.cli("put", "nan", "NaN", "-t", "application/json")
        out, _ = self.cli("get", "nan")
        self.assertEqual(wire.strictjson(out), "NaN")

    def test_cat_text(self) -> None:
        """cat's JSON gives a text value as "text", not value_base64."""
        item = self.json_out("cat", "app/x")
        self.assertEqual(item["text"], "hello")
        self.assertNotIn("value_base64", item)
        self.assertEqual(self.json_out("cat", "app/bin")["value_base64"], "AP8K")

    def test_list_values_text(self) -> None:
        """-o text list --values shows text as itself, multi-line text quoted, bytes as base64."""
        out, _ = self.cli("-o", "text", "list", "app/", "--values")
        self.assertEqual(out, 'app/bin\tbase64:AP8K\napp/latin\tcaf\u00e9\n'
                              'app/lines\t"one\\ntwo\\n"\napp/x\thello\n')
        page = self.json_out("list", "app/", "--values")
        self.assertEqual([item.get("text") for item in page["items"]],
                         [None, "caf\u00e9", "one\ntwo\n", "hello"])

    def test_batch_get_text(self) -> None:
        """A batch get result of a text value carries it as text."""
        ops = [{"op": "get", "key": "app/x"}]
        result = self.json_out("batch", stdin=json.dumps(ops).encode("ascii"))
        self.assertEqual(result["results"][0]["text"], "hello")
        out, _ = self.cli("-o", "text", "batch", stdin=json.dumps(ops).encode("ascii"))
        self.assertEqual(out.splitlines()[0], "get app/x: hello")

    def test_text_rule(self) -> None:
        """text/* and JSON types decode by their charset; other types only as clean UTF-8."""
        self.assertEqual(client.text_of(b"caf\xc3\xa9", "text/plain"), "caf\u00e9")
        self.assertEqual(client.text_of(b"\x01", "text/plain"), "\x01")
        self.assertIsNone(client.text_of(b"\xe9", "text/plain"))
        self.assertEqual(client.text_of(b"\xe9", "text/csv; charset=latin-1"), "\u00e9")
        self.assertIsNone(client.text_of(b"x", "text/plain; charset=nonsense"))
        self.assertEqual(client.text_of(b"a\tb\r\n", "application/octet-stream"), "a\tb\r\n")
        self.assertIsNone(client.text_of(b"a\x00b", "application/octet-stream"))
        self.assertIsNone(client.text_of(b"\x89PNG", "image/png"))


class RmCommandTests(V1CLITestCase):
    """kvtwist rm."""

    def test_rm(self) -> None:
        """rm deletes the key and prints the result; text prints 'deleted KEY'."""
        self.cli("put", "a b", "1")
        self.cli("put", "c", "1")
        self.assertEqual(self.json_out("rm", "a b"), {"key": "a b", "deleted": True, "revision": 3})
        self.assertEqual(self.cli("-o", "text", "rm", "c"), ("deleted c\n", ""))
        self.assertEqual(self.store.rows, {})

    def test_rm_missing(self) -> None:
        """rm of an absent key exits 1."""
        self.cli("rm", "nope", code=1)

    def test_rm_if_match(self) -> None:
        """rm --if-match with a stale revision exits 4 and keeps the key."""
        self.cli("put", "a", "1")
        self.cli("put", "a", "2")
        out, err = self.cli("rm", "a", "--if-match", "1", code=4)
        self.assertTrue(err.startswith("kvtwist: 412 precondition-failed"), err)
        self.cli("rm", "a", "--if-match", "2")
        self.assertEqual(self.store.rows, {})


class ListCommandTests(V1CLITestCase):
    """kvtwist list."""

    def setUp(self) -> None:
        super().setUp()
        for key in ("a/1", "a/2", "a/3"):
            self.cli("put", key, '"%s"' % (key,), "--json")
        self.cli("put", "a/bin", "-", stdin=b"\x00")
        self.cli("put", "b \u00e9", "x")

    def test_list_json(self) -> None:
        """list PREFIX prints the page as JSON."""
        page = self.json_out("list", "a/")
        self.assertEqual([i["key"] for i in page["items"]], ["a/1", "a/2", "a/3", "a/bin"])
        self.assertEqual((page["revision"], page["next"]), (5, None))
        self.assertNotIn("value", page["items"][0])

    def test_list_text(self) -> None:
        """--output text prints one key per line; without a prefix, every key."""
        self.assertEqual(self.cli("-o", "text", "list"), ("a/1\na/2\na/3\na/bin\nb \u00e9\n", ""))

    def test_list_values(self) -> None:
        """--values adds the values: JSON inline, others base64 (text: after a tab)."""
        out, err = self.cli("-o", "text", "list", "a/", "--values")
        self.assertEqual(out, 'a/1\t"a/1"\na/2\t"a/2"\na/3\t"a/3"\na/bin\tbase64:AA==\n')
        self.assertEqual(self.json_out("list", "a/", "--values")["items"][0]["value"], "a/1")

    def test_list_pages(self) -> None:
        """--limit gives one page with next; text mode hints at --after on stderr; --after resumes."""
        page = self.json_out("list", "a/", "--limit", "2")
        self.assertEqual(([i["key"] for i in page["items"]], page["next"]), (["a/1", "a/2"], "a/2"))
        out, err = self.cli("-o", "text", "list", "a/", "-n", "2")
        self.assertEqual(out, "a/1\na/2\n")
        self.assertEqual(err, 'kvtwist: more keys follow; next page: --after "a/2" (or use --all)\n')
        page = self.json_out("list", "a/", "--limit", "2", "--after", "a/2")
        self.assertEqual([i["key"] for i in page["items"]], ["a/3", "a/bin"])

    def test_list_all(self) -> None:
        """--all follows next through every page and prints them as one listing."""
        listing = self.json_out("list", "--all", "--limit", "1")
        self.assertEqual([i["key"] for i in listing["items"]],
                         ["a/1", "a/2", "a/3", "a/bin", "b \u00e9"])
        self.assertEqual((listing["next"], listing["pages"]), (None, 5))
        out, err = self.cli("-o", "text", "list", "a/", "--all", "-n", "2", "--after", "a/1")
        self.assertEqual((out, err), ("a/2\na/3\na/bin\n", ""))

    def test_list_empty(self) -> None:
        """A prefix with no keys prints an empty listing (text: nothing)."""
        self.assertEqual(self.cli("-o", "text", "list", "zzz"), ("", ""))
        self.assertEqual(self.json_out("list", "zzz")["items"], [])

    def test_list_bad_limit(self) -> None:
        """--limit 0 or a non-number exits 2; one over the server's maximum exits 1."""
        for limit in ("0", "-3", "many"):
            self.cli("list", "--limit", limit, code=2)
        out, err = self.cli("list", "--limit", "1000000", code=1)
        self.assertTrue(err.startswith("kvtwist: 400 bad-parameter"), err)


BATCH_OPS = [
    {"op": "check-absent", "key": "new/\u00e9 x"},
    {"op": "set", "key": "new/\u00e9 x", "value": {"a": 1}},
    {"op": "set", "key": "bin", "value_base64": "AP8=", "content_type": "image/x"},
    {"op": "delete", "key": "old"},
    {"op": "get", "key": "keep"},
    {"op": "get", "key": "missing"},
]

BATCH_TEXT = (
    "check-absent new/\u00e9 x: ok\n"
    "set new/\u00e9 x: created\n"
    "set bin: created\n"
    "delete old: deleted\n"
    'get keep: {"k": 1}\n'
    "get missing: absent\n"
)


class OpsInputTests(V1CLITestCase):
    """What batch and txn accept as input: the same for both commands."""

    def test_bad_json(self) -> None:
        """Input that is not strict JSON, or not UTF-8, exits 2 and sends nothing."""
        for command in ("batch", "txn"):
            for data, message in (
                (b"[{", "the ops in stdin are not strict JSON: "),
                (b"", "the ops in stdin are not strict JSON: "),
                (b'[{"op": "get", "key": "a", "key": "b"}]',
                 "the ops in stdin are not strict JSON: the JSON object repeats the key 'key'"),
                (b'[{"op": "set", "key": "a", "value": NaN}]',
                 "the ops in stdin are not strict JSON: NaN is not valid JSON"),
                (b'["\\ud800"]', "the ops in stdin are not strict JSON: the JSON contains a lone surrogate"),
                (b"\xff[]", "the ops in stdin are not valid UTF-8"),
            ):
                out, err = self.cli(command, stdin=data, code=2, http=Failing(AssertionError()))
                self.assertTrue(err.startswith("kvtwist: " + message), (command, data, err))
                self.assertEqual(out, "")

    def test_wrong_shape(self) -> None:
        """A document that is neither a list nor {"ops": [...]} exits 2."""
        for command in ("batch", "txn"):
            for data in (b"{}", b'{"ops": {}}', b"3", b'"ops"', b"null"):
                out, err = self.cli(command, "-", stdin=data, code=2, http=Failing(AssertionError()))
                self.assertEqual(
                    err, 'kvtwist: the ops in stdin must be a JSON list of ops or {"ops": [...]}\n'
                )

    def test_unreadable_file(self) -> None:
        """A FILE that cannot be read exits 2, naming it."""
        missing = self.mktemp()
        for command in ("batch", "txn"):
            out, err = self.cli(command, missing, code=2)
            self.assertEqual(err, "kvtwist: cannot read %s: No such file or directory\n" % (missing,))

    def test_file_errors_name_the_file(self) -> None:
        """A bad ops file is named in the message."""
        path = self.file(b"[")
        out, err = self.cli("txn", path, code=2)
        self.assertTrue(err.startswith("kvtwist: the ops in %r are not strict JSON" % (path,)), err)


class BatchCommandTests(V1CLITestCase):
    """kvtwist batch."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "old", "1")
        self.cli("put", "keep", '{"k": 1}', "--json")

    def test_batch_from_stdin(self) -> None:
        """batch reads a JSON list of ops from stdin and prints the server's results."""
        result = self.json_out("batch", stdin=json.dumps(BATCH_OPS).encode("utf-8"))
        self.assertEqual(result["revision"], 3)
        self.assertEqual(len(result["results"]), 6)
        self.assertEqual(self.store.rows["new/\u00e9 x"].value, b'{"a":1}')
        self.assertEqual(self.store.rows["bin"].value, b"\x00\xff")
        self.assertNotIn("old", self.store.rows)

    def test_batch_from_file_text(self) -> None:
        """batch FILE reads {"ops": [...]}; text prints one line per op and the revision."""
        path = self.file(json.dumps({"ops": BATCH_OPS}).encode("utf-8"))
        self.assertEqual(
            self.cli("-o", "text", "batch", path), (BATCH_TEXT + "committed revision 3\n", "")
        )

    def test_batch_conflict_exits_4(self) -> None:
        """A failed check exits 4, printing the problem and one line per conflict; nothing applied."""
        ops = [{"op": "set", "key": "x", "value": 1},
               {"op": "check", "key": "keep", "revision": 1},
               {"op": "check-absent", "key": "old"}]
        out, err = self.cli("batch", stdin=json.dumps(ops).encode("ascii"), code=4)
        self.assertEqual(out, "")
        self.assertEqual(
            err,
            "kvtwist: 409 conflict: the commit was not applied: 2 check(s) failed on 'keep', 'old'\n"
            'kvtwist: conflict on "keep" (op 1): expected revision 1, found revision 2\n'
            'kvtwist: conflict on "old" (op 2): expected absent, found revision 1\n',
        )
        self.assertNotIn("x", self.store.rows)

    def test_batch_bad_op_is_the_servers_400(self) -> None:
        """batch leaves op checking to the server: a bad op exits 1 with its 400."""
        out, err = self.cli("batch", stdin=b'[{"op": "set", "key": "a"}]', code=1)
        self.assertEqual(
            err, "kvtwist: 400 bad-op: op 0: a set takes exactly one of value and value_base64\n"
        )


class IncrCommandTests(V1CLITestCase):
    """kvtwist incr."""

    def test_incr_prints_the_new_value(self) -> None:
        """incr KEY [BY] prints the counter's new value (text) or {key, value} (json), any size."""
        self.assertEqual(self.cli("-o", "text", "incr", "hits"), ("1\n", ""))
        self.assertEqual(self.cli("-o", "text", "incr", "hits", "-3"), ("-2\n", ""))
        self.assertEqual(self.json_out("incr", "hits", str(10 ** 25)), {"key": "hits", "value": 10 ** 25 - 2})
        self.assertEqual(self.store.rows["hits"].value, str(10 ** 25 - 2).encode())

    def test_not_an_integer_exits_4(self) -> None:
        """incr of a key that holds no JSON integer exits 4 naming not-an-integer; a bad BY is a usage error."""
        self.cli("put", "name", '"x"', "--json")
        out, err = self.cli("incr", "name", code=4)
        self.assertIn("409 not-an-integer", err)
        self.cli("incr", "n", "1.5", code=2)


class TxnCommandTests(V1CLITestCase):
    """kvtwist txn."""

    def setUp(self) -> None:
        super().setUp()
        self.cli("put", "old", "1")
        self.cli("put", "keep", '{"k": 1}', "--json")

    def test_txn_from_stdin(self) -> None:
        """txn stages each op in a transaction, commits, and prints id, revision, ops and results."""
        result = self.json_out("txn", stdin=json.dumps(BATCH_OPS).encode("utf-8"))
        self.assertEqual((result["revision"], result["ops"]), (3, 3))
        self.assertIsInstance(result["id"], str)
        self.assertEqual(
            [(r["op"], r["key"]) for r in result["results"]],
            [(op["op"], op["key"]) for op in BATCH_OPS],
        )
        self.assertEqual(self.store.rows["new/\u00e9 x"].value, b'{"a":1}')
        self.assertNotIn("old", self.store.rows)
        self.assertEqual(len(self.transactions), 0)

    def test_txn_from_file_text(self) -> None:
        """txn FILE prints the same text as batch would."""
        path = self.file(json.dumps(BATCH_OPS).encode("utf-8"))
        self.assertEqual(
            self.cli("-o", "text", "txn", path), (BATCH_TEXT + "committed revision 3\n", "")
        )

    def test_txn_accepts_the_batch_document(self) -> None:
        """txn also reads {"ops": [...]}, so one file serves both commands."""
        self.cli("txn", "-", stdin=b'{"ops": [{"op": "set", "key": "z", "value": 0}]}')
        self.assertEqual(self.store.rows["z"].value, b"0")

    def test_txn_check_fails_exits_4_and_aborts(self) -> None:
        """A check that does not hold exits 4, aborts the transaction and applies nothing."""
        ops = [{"op": "set", "key": "x", "value": 1},
               {"op": "check", "key": "keep", "revision": 1}]
        out, err = self.cli("txn", stdin=json.dumps(ops).encode("ascii"), code=4)
        self.assertEqual(
            err,
            "kvtwist: 409 conflict: the transaction was aborted: 1 check(s) failed on 'keep'\n"
            'kvtwist: conflict on "keep" (op 1): expected revision 1, found revision 2\n',
        )
        self.assertNotIn("x", self.store.rows)
        self.assertEqual(len(self.transactions), 0)

    def test_txn_commit_conflict_exits_4(self) -> None:
        """Another commit between the reads and the commit exits 4 naming the changed key."""

        def theirs() -> None:
            self.successResultOf(self.store.commit([Put("keep", b"theirs", "text/plain")]))

        http = Interloper(self.http, "/commit", theirs)
        ops = [{"op": "get", "key": "keep"}, {"op": "set", "key": "x", "value": 1}]
        out, err = self.cli("txn", stdin=json.dumps(ops).encode("ascii"), code=4, http=http)
        self.assertEqual(
            err.splitlines()[1],
            'kvtwist: conflict on "keep" (changed by another commit): '
            "expected revision 2, found revision 3",
        )
        self.assertNotIn("x", self.store.rows)

    def test_txn_bad_op_exits_2_sends_nothing(self) -> None:
        """txn checks ops before opening a transaction: a bad op exits 2, nothing sent."""
        out, err = self.cli(
            "txn", stdin=b'[{"op": "get", "key": "a"}, {"op": "check", "key": "a"}]',
            code=2, http=Failing(AssertionError()),
        )
        self.assertEqual(err, "kvtwist: op 1: revision must be a non-negative integer\n")

    def test_txn_server_error_exits_1_and_aborts(self) -> None:
        """An op the server refuses exits 1; the transaction is aborted, nothing applied."""
        ops = [{"op": "set", "key": "a", "value": 1}, {"op": "set", "key": "k" * 1025, "value": 1}]
        out, err = self.cli("txn", stdin=json.dumps(ops).encode("ascii"), code=1)
        self.assertTrue(err.startswith("kvtwist: 400 key-too-long"), err)
        self.assertNotIn("a", self.store.rows)
        self.assertEqual(len(self.transactions), 0)

    def test_txn_timeout_exits_3(self) -> None:
        """A transaction that stops getting answers exits 3 after --timeout."""
        http = FailAfter(self.http, 2)
        ops = [{"op": "set", "key": "a", "value": 1}, {"op": "set", "key": "b", "value": 1}]
        out, err = io.StringIO(), io.StringIO()
        d = main(self.clock, "--timeout", "5", "txn", http=http, stdout=out, stderr=err,
                 environ={}, stdin=io.BytesIO(json.dumps(ops).encode("ascii")))
        self.http.flush()
        self.clock.advance(5)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 3)
        self.assertIn("timed out after 5 s", err.getvalue())
        self.assertEqual(http.cancelled, 1)

    def test_txn_awkward_keys(self) -> None:
        """Keys with '/', spaces, '%', UTF-8 and reserved names go through txn intact."""
        ops = [{"op": "set", "key": key, "value": i} for i, key in enumerate(AWKWARD_KEYS)]
        self.cli("txn", stdin=json.dumps(ops).encode("utf-8"))
        for i, key in enumerate(AWKWARD_KEYS):
            self.assertEqual(self.store.rows[key].value, str(i).encode("ascii"), key)


class V1UsageTests(V1CLITestCase):
    """Help and usage of the v1 commands."""

    def test_help_lists_v1_commands_and_exit_4(self) -> None:
        """--help names the new commands and documents exit code 4."""
        out, err = self.cli("--help")
        for text in ("put", "cat", "rm", "list", "batch", "txn", "4  conflict"):
            self.assertIn(text, out)

    def test_command_help(self) -> None:
        """Each v1 command's --help exits 0; batch and txn show the op shapes."""
        for command in ("put", "cat", "rm", "list", "batch", "txn"):
            out, err = self.cli(command, "--help")
            self.assertIn("exit codes:", out)
            self.assertEqual(err, "")
        for command in ("batch", "txn"):
            self.assertIn('{"op": "check-absent", "key": K}', self.cli(command, "--help")[0])

    def test_usage_errors(self) -> None:
        """Missing or extra arguments of the v1 commands exit 2 with usage."""
        for argv in (("put",), ("cat",), ("cat", "a", "b"), ("rm",), ("list", "a", "b"),
                     ("batch", "a", "b"), ("txn", "a", "b"), ("put", "a", "b", "c")):
            out, err = self.cli(*argv, code=2)
            self.assertIn("usage: kvtwist", err, argv)

    def test_undecodable_arguments(self) -> None:
        """Arguments that were not UTF-8 on the command line exit 2."""
        self.assertEqual(self.cli("put", "k\udcff", "v", code=2)[1], "kvtwist: KEY is not valid UTF-8\n")
        self.assertEqual(self.cli("put", "k", "v\udcff", code=2)[1], "kvtwist: VALUE is not valid UTF-8\n")
        self.assertEqual(self.cli("list", "p\udcff", code=2)[1], "kvtwist: PREFIX is not valid UTF-8\n")
        self.assertEqual(self.cli("txn", "f\udcff", code=2)[1],
                         "kvtwist: the file name is not valid UTF-8\n")


class V1ConsoleScriptTests(SynchronousTestCase):
    """The v1 commands through a real interpreter, reading the real stdin (no network)."""

    def run_script(self, *argv: str, stdin: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-b", "-W", "error::BytesWarning", "-c",
             "from kvtwist.cli import run; run()", *argv],
            input=stdin, capture_output=True, timeout=60, cwd=PROJECT,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )

    def test_txn_reads_stdin(self) -> None:
        """'kvtwist txn' reads the process's stdin; bad JSON there exits 2 without a traceback."""
        result = self.run_script("txn", stdin=b"[{")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, b"")
        self.assertTrue(
            result.stderr.startswith(b"kvtwist: the ops in stdin are not strict JSON"), result.stderr
        )

    def test_bad_op_from_stdin(self) -> None:
        """'kvtwist txn -' names the bad op read from stdin and exits 2."""
        result = self.run_script("txn", "-", stdin=b'[{"op": "nope", "key": "a"}]')
        self.assertEqual(result.returncode, 2)
        self.assertTrue(result.stderr.startswith(b"kvtwist: op 0: "), result.stderr)

    def test_no_stdin(self) -> None:
        """With stdin closed (no sys.stdin), 'put KEY -' exits 2 and says so."""
        result = subprocess.run(
            [sys.executable, "-c",
             "import sys; sys.stdin = None; from kvtwist.cli import run; sys.argv[1:] = "
             "['put', 'k', '-']; run()"],
            capture_output=True, timeout=60, cwd=PROJECT,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
        self.assertEqual((result.returncode, result.stderr), (2, b"kvtwist: there is no stdin to read\n"))
