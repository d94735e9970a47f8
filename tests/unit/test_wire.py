# -*- test-case-name: tests.unit.test_wire -*-
"""
The wire vocabulary client and server share (L{kvtwist.wire}): strict
JSON, value fields, base64, RFC 3339 times, ETags and the batch-op schema;
and that both sides give the same answers with it.
"""

import base64
import json
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import client, dumpformat, wire
from kvtwist.client import KeyValue
from kvtwist.errors import InvalidInput
from kvtwist.testing import MemoryStore, memory_root
from kvtwist.web.v1 import base
from kvtwist.web.v1.batch_ops import parse_ops
from tests.helpers.webtest import TreeClient

#: Bytes stored with a JSON content type that are not strict JSON.
NOT_STRICT = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"[1, NaN]",
    b'{"x": Infinity}',
    b"1e400",
    b'{"a": 1, "a": 2}',
    b"[" * 33 + b"]" * 33,
    b'"\\ud800"',
    b"\xef\xbb\xbf{}",
    b"\xff",
    b"{nope",
)


def strict_dumps(document):
    """C{document} as JSON, refusing what strict JSON cannot hold."""
    return json.dumps(document, allow_nan=False)


class ImportTests(SynchronousTestCase):
    """What importing the wire vocabulary costs a client."""

    def test_no_server_code(self):
        """kvtwist.wire imports neither Twisted nor the server's modules, only the data model."""
        loaded = subprocess.run(
            [sys.executable, "-c",
             "import sys, kvtwist.wire; print(' '.join(sorted(m for m in sys.modules"
             " if m.startswith(('twisted', 'kvtwist')))))"],
            capture_output=True, check=True, text=True,
        ).stdout.split()
        self.assertEqual(loaded, ["kvtwist", "kvtwist.model", "kvtwist.wire"])


class StrictJSONTests(SynchronousTestCase):
    """L{wire.strictjson}: one parser, raising the caller's error."""

    def test_default_error_is_a_value_error(self):
        """Without an error factory, a rejection is a WireError (a ValueError) with a code."""
        e = self.assertRaises(ValueError, wire.strictjson, b"NaN")
        self.assertIsInstance(e, wire.WireError)
        self.assertEqual((e.code, str(e)), ("bad-json", "NaN is not valid JSON"))

    def test_error_factory(self):
        """The factory gets the code, detail and extra fields; its exception is raised."""
        e = self.assertRaises(InvalidInput, wire.strictjson, b'{"a": 1, "a": 2}', InvalidInput)
        self.assertEqual((e.code, e.extra), ("duplicate-key", {"key": "a"}))
        e = self.assertRaises(InvalidInput, wire.strictjson, b"[" * 33 + b"]" * 33, InvalidInput)
        self.assertEqual((e.code, e.extra), ("too-deep", {"limit": 32}))

    def test_rejections(self):
        """Every kind of bytes that is not strict JSON is refused, each with its code."""
        codes = {}
        for data in NOT_STRICT:
            e = self.assertRaises(wire.WireError, wire.strictjson, data)
            codes[data] = e.code
        self.assertEqual(codes[b"\xff"], "bad-encoding")
        self.assertEqual(codes[b'"\\ud800"'], "bad-encoding")
        self.assertEqual(codes[b"1e400"], "bad-json")
        self.assertEqual(codes[b"\xef\xbb\xbf{}"], "bad-json")

    def test_text_and_depth(self):
        """Text parses like its UTF-8 bytes; max_depth=None lifts the nesting limit."""
        self.assertEqual(wire.strictjson('{"é": [1.5]}'), {"é": [1.5]})
        deep = "[" * 40 + "]" * 40
        self.assertRaises(wire.WireError, wire.strictjson, deep)
        self.assertEqual(wire.strictjson("[" * 3 + "]" * 3, max_depth=None), [[[]]])
        self.assertIsInstance(wire.strictjson(deep, max_depth=None), list)

    def test_subject(self):
        """The subject names what was parsed in the detail."""
        e = self.assertRaises(wire.WireError, wire.strictjson, b"{", subject="line")
        self.assertTrue(str(e).startswith("the line is not valid JSON: "), str(e))

    def test_server_parse_is_strictjson(self):
        """The server's request-body parser raises InvalidInput with the same codes."""
        from kvtwist.strictjson import parse

        for data in NOT_STRICT:
            expected = self.assertRaises(wire.WireError, wire.strictjson, data)
            e = self.assertRaises(InvalidInput, parse, data)
            self.assertEqual((e.code, e.detail), (expected.code, expected.detail))


class ValueFieldsTests(SynchronousTestCase):
    """The value fields, the same on both sides."""

    def test_one_function(self):
        """Client and server describe a value with one function."""
        self.assertIs(client.value_fields, wire.value_fields)
        self.assertIs(base.value_fields, wire.value_fields)

    def test_not_strict_goes_as_base64(self):
        """A JSON-typed value that is not strict JSON is given as value_base64, exactly."""
        for data in NOT_STRICT:
            fields = wire.value_fields(data, "application/json")
            self.assertEqual(list(fields), ["value_base64"], data)
            self.assertEqual(base64.b64decode(fields["value_base64"]), data)
            strict_dumps(fields)

    def test_strict_is_inline(self):
        """Strict JSON with a JSON type (+json too) is inline; other types are base64."""
        self.assertEqual(
            wire.value_fields(b'{"a": [1]}', "application/json"), {"value": {"a": [1]}}
        )
        self.assertEqual(wire.value_fields(b"2", "application/x+json; charset=utf-8"), {"value": 2})
        self.assertEqual(wire.value_fields(b"2", "text/plain"), {"value_base64": "Mg=="})

    def test_client_item_of_nan_is_strict_json(self):
        """KeyValue.as_item of a JSON-typed NaN is strict JSON (what kvtwist cat prints)."""
        for data in (b"NaN", b"Infinity", b"-Infinity"):
            entry = KeyValue("k", data, "application/json", 3, 1, 3, None)
            item = entry.as_item()
            self.assertNotIn("value", item)
            self.assertEqual(client.decode_value_base64(item["value_base64"]), data)
            self.assertEqual(json.loads(strict_dumps(item))["size"], len(data))

    def test_round_trip(self):
        """value_from_fields takes value_fields' output back (inline JSON made canonical)."""
        self.assertEqual(
            wire.value_from_fields(wire.value_fields(b"NaN", "application/json")), (b"NaN", None)
        )
        self.assertEqual(
            wire.value_from_fields(wire.value_fields(b'{"a": 1}', "application/json")),
            (b'{"a":1}', "application/json"),
        )
        for fields in ({}, {"value": 1, "value_base64": ""}):
            e = self.assertRaises(wire.WireError, wire.value_from_fields, fields)
            self.assertEqual(str(e), "a set takes exactly one of value and value_base64")
        e = self.assertRaises(wire.WireError, wire.value_from_fields, {"value": float("nan")})
        self.assertTrue(str(e).startswith("the value is not strict JSON"), str(e))


class ServerValueTests(SynchronousTestCase):
    """The server's JSON answers carrying stored values that are not strict JSON."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tree = TreeClient(self, memory_root(MemoryStore(self.clock)))
        for index, data in enumerate((b"NaN", b"Infinity", b"-Infinity")):
            answer = self.tree.request(
                "PUT", "/v1/kv/n%d" % (index,), body=data,
                headers={"Content-Type": "application/json"},
            )
            self.assertEqual(answer.status, 201)

    def assertStrictValues(self, body, items):
        """C{body} is strict JSON and each item gives its value as base64."""
        wire.strictjson(body, max_depth=None)
        self.assertEqual(
            [base64.b64decode(item["value_base64"]) for item in items],
            [b"NaN", b"Infinity", b"-Infinity"],
        )
        for item in items:
            self.assertNotIn("value", item)

    def test_listing(self):
        """A listing with values gives NaN and Infinity as value_base64, in strict JSON."""
        answer = self.tree.request("GET", "/v1/kv/?values=1")
        self.assertEqual(answer.status, 200)
        self.assertStrictValues(answer.body, answer.json["items"])

    def test_batch_get(self):
        """A batch get gives NaN and Infinity as value_base64, in strict JSON."""
        answer = self.tree.request(
            "POST", "/v1/batch",
            json_body={"ops": [{"op": "get", "key": "n%d" % (i,)} for i in range(3)]},
        )
        self.assertEqual(answer.status, 200)
        self.assertStrictValues(answer.body, answer.json["results"])


class Base64Tests(SynchronousTestCase):
    """One strict base64 decoder."""

    def test_strict(self):
        """Padding, whitespace, URL-safe letters and non-strings are refused."""
        self.assertEqual(wire.decode_base64("aGk="), b"hi")
        self.assertEqual(wire.encode_base64(b"\xff\x00"), "/wA=")
        for bad in ("aGk", "aG k=", "aGk=\n", "-_8=", 5, None, b"aGk="):
            e = self.assertRaises(ValueError, wire.decode_base64, bad)
            self.assertEqual(str(e), "value_base64 is not valid base64")

    def test_error_factory(self):
        """The caller's error is raised, with code bad-base64."""
        e = self.assertRaises(InvalidInput, wire.decode_base64, "!!", InvalidInput)
        self.assertEqual(e.code, "bad-base64")


class TimeAndETagTests(SynchronousTestCase):
    """RFC 3339 times and ETags."""

    def test_rfc3339(self):
        """Times are UTC to the millisecond, and parse back; a time without a zone is refused."""
        self.assertEqual(wire.rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.250Z")
        self.assertEqual(wire.parse_rfc3339("2023-11-14T22:13:20.250Z"), 1_700_000_000.25)
        self.assertEqual(wire.parse_rfc3339("2023-11-14T23:13:20+01:00"), 1_700_000_000)
        self.assertRaises(ValueError, wire.parse_rfc3339, "2023-11-14T22:13:20")
        self.assertRaises(ValueError, wire.parse_rfc3339, "yesterday")

    def test_etag(self):
        """An ETag is the quoted revision, and names it back; weak tags only when asked."""
        self.assertEqual(wire.etag(5), '"5"')
        self.assertEqual(client.KeyValue("k", b"", "t", 5, 1, 1, None).etag, '"5"')
        self.assertEqual(wire.etag_revision(' "5" '), 5)
        self.assertIsNone(wire.etag_revision('W/"5"'))
        self.assertEqual(wire.etag_revision('W/"5"', weak=True), 5)
        for bad in ("5", '"x"', '"\u00b2"', '"%s"' % ("9" * 20,), '"', ""):
            self.assertIsNone(wire.etag_revision(bad, weak=True), bad)


class BatchSchemaTests(SynchronousTestCase):
    """The batch-op schema, checked alike by the client and the server."""

    BAD = (
        [1],
        [{"op": "frob", "key": "a"}],
        [{"op": "set", "key": "a"}],
        [{"op": "set", "key": "a", "value": 1, "value_base64": ""}],
        [{"op": "set", "key": "a", "value_base64": "!!"}],
        [{"op": "set", "key": "a", "value_base64": 5}],
        [{"op": "check", "key": "a"}],
        [{"op": "check", "key": "a", "revision": -1}],
        [{"op": "check", "key": "a", "revision": True}],
    )

    def test_same_details(self):
        """A bad op gets the same sentence from the client's check and the server's parse."""
        for ops in self.BAD:
            client_error = self.assertRaises(ValueError, client.check_ops, ops)
            server_error = self.assertRaises(
                InvalidInput, parse_ops, ops, Clock(), kinds=client.OP_KINDS
            )
            self.assertEqual(str(client_error), server_error.detail, ops)

    def test_kinds(self):
        """The client stages every kind of the server's batch but incr."""
        self.assertEqual(set(wire.OP_KINDS) - set(client.OP_KINDS), {"incr"})
        self.assertLessEqual(set(wire.BRANCH_KINDS), set(wire.OP_KINDS))
        self.assertLessEqual(wire.WRITE_KINDS, set(wire.BRANCH_KINDS))

    def test_builders(self):
        """The ops the client builds are ones the server accepts."""
        ops = [wire.set_op("a", b"\xff", "image/png"), wire.incr_op("n", 2)]
        parsed = parse_ops(ops, Clock())
        self.assertEqual([kind for kind, _ in parsed], ["set", "incr"])
        self.assertEqual(parsed[0][1]["put"].value, b"\xff")
        self.assertEqual(parsed[0][1]["put"].content_type, "image/png")
        self.assertEqual(parsed[1][1]["by"], 2)


class ContentTypeTests(SynchronousTestCase):
    """One rule for a content type, kept by the server, the client and load alike."""

    def test_the_rule(self) -> None:
        """1 to 255 printable ASCII characters, surrounding spaces aside."""
        self.assertTrue(wire.valid_content_type("text/plain; charset=utf-8"))
        self.assertTrue(wire.valid_content_type(" a/b "))
        self.assertTrue(wire.valid_content_type("x" * 255))
        for bad in ("", "   ", "x" * 256, "caf\u00e9/x", "a/b\r\nx: y", "a\tb"):
            self.assertFalse(wire.valid_content_type(bad), bad)

    def test_every_side_refuses_the_same(self) -> None:
        """What the server refuses (400), the client and the dump format refuse before sending."""
        for bad in ("x" * 256, "caf\u00e9/x", " "):
            with self.assertRaises(InvalidInput):
                base.check_content_type(bad)
            with self.assertRaises(ValueError):
                client.kv._content_type(bad)
        with self.assertRaises(ValueError):
            dumpformat.parse_record(
                json.dumps({"key": "k", "value_base64": "", "content_type": "x" * 256}).encode(), 1
            )
