"""
Tests for L{kvtwist.client.sse}: the text/event-stream parser, by the
WHATWG rules, fed in any chunks.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.client import EventStreamParser, ServerSentEvent, SSEComment


class EventStreamParserTests(SynchronousTestCase):
    """The text/event-stream parser, by the WHATWG rules, fed in any chunks."""

    STREAM = (
        b"retry: 1000\n\n"
        b"id: 1\nevent: put\ndata: {\"key\": \"a\"}\n\n"
        b": heartbeat\n\n"
        b"event: note\r\ndata: line one\r\ndata: line two\r\n\r\n"
        b"id: 2\rdata: caf\xc3\xa9 \xf0\x9f\x98\x80\r\r"
    )
    EXPECTED = [
        ServerSentEvent("put", '{"key": "a"}', "1"),
        SSEComment("heartbeat"),
        ServerSentEvent("note", "line one\nline two", "1"),
        ServerSentEvent("message", "caf\u00e9 \U0001f600", "2"),
    ]

    def feed_all(self, chunks) -> list:
        parser = EventStreamParser()
        out: list = []
        for chunk in chunks:
            out.extend(parser.feed(chunk))
        return out

    def test_whole_stream(self) -> None:
        """A stream in one chunk gives its messages and comments in order; retry is read."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(self.STREAM), self.EXPECTED)
        self.assertEqual((parser.retry, parser.last_event_id), (1000, "2"))

    def test_split_at_every_byte(self) -> None:
        """Byte by byte (splitting CRLFs and UTF-8 sequences) gives the same result."""
        chunks = [self.STREAM[i : i + 1] for i in range(len(self.STREAM))]
        self.assertEqual(self.feed_all(chunks), self.EXPECTED)

    def test_split_at_every_point(self) -> None:
        """Any two-chunk split gives the same result (a CR ending one chunk, LF the next)."""
        for cut in range(len(self.STREAM) + 1):
            self.assertEqual(
                self.feed_all([self.STREAM[:cut], self.STREAM[cut:]]), self.EXPECTED, cut
            )

    def test_field_rules(self) -> None:
        """One leading space is dropped, a bare field is empty, unknown fields and bad ids/retries are ignored."""
        parser = EventStreamParser()
        out = parser.feed(
            b"\xef\xbb\xbfdata:x\ndata:  two\ndata\nfoo: bar\nid: 7\n\n"
            b"id: bad\x00id\nretry: soon\ndata: y\n\n"
        )
        self.assertEqual(
            out, [ServerSentEvent("message", "x\n two\n", "7"), ServerSentEvent("message", "y", "7")]
        )
        self.assertIsNone(parser.retry)

    def test_message_without_data_sets_id_only(self) -> None:
        """A message with no data is not dispatched, but its id becomes the last event ID."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"id: 9\nevent: put\n\n"), [])
        self.assertEqual(parser.last_event_id, "9")
        self.assertEqual(parser.feed(b"data: z\n\n"), [ServerSentEvent("message", "z", "9")])

    def test_unfinished_message_waits(self) -> None:
        """Nothing is dispatched until the blank line that ends a message."""
        parser = EventStreamParser()
        self.assertEqual(parser.feed(b"id: 1\nevent: put\ndata: {}\n"), [])
        self.assertEqual(len(parser.feed(b"\n")), 1)

    def test_oversized_line_refused(self) -> None:
        """A line without an end past max_bytes is a ValueError, not unbounded memory."""
        parser = EventStreamParser(max_bytes=100)
        parser.feed(b"data: " + b"x" * 90)
        self.assertRaises(ValueError, parser.feed, b"x" * 20)

    def test_oversized_message_refused(self) -> None:
        """Data lines adding up past max_bytes are a ValueError."""
        parser = EventStreamParser(max_bytes=100)
        self.assertRaises(ValueError, parser.feed, (b"data: " + b"y" * 40 + b"\n") * 3)
