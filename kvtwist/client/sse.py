# -*- test-case-name: tests.unit.test_client_sse -*-
"""
The Server-Sent Events wire format (the WHATWG event-stream rules) as
kvcache's watch feed uses it: L{EventStreamParser} turns bytes into
L{ServerSentEvent}s and L{SSEComment}s, with a bound on line length.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import List, Optional, Union


#: The longest line (and the largest frame) an event stream may send before
#: the client takes the server for broken: events carry values of at most
#: 64 KiB (base64 makes that about 87 KiB), so this leaves a wide margin.
MAX_EVENT_BYTES = 4 * 1024 * 1024

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """
    One message of a C{text/event-stream}, as the WHATWG HTML standard's
    event stream interpretation dispatches it.

    @ivar event: its C{event:} field, or C{"message"} without one.
    @ivar data: its C{data:} lines joined with newlines.
    @ivar id: the last event ID in force when it was dispatched (C{id:}
        fields carry over to later messages until the next one), C{""} if
        none was ever set.
    """

    event: str
    data: str
    id: str


@dataclass(frozen=True)
class SSEComment:
    """A comment line of an event stream (C{: heartbeat}), without the colon."""

    text: str


class EventStreamParser:
    """
    An incremental C{text/event-stream} parser: L{feed} it the body's bytes
    as they arrive, in chunks of any size (a frame, a line, even a UTF-8
    sequence may be split anywhere), and it returns what each chunk
    completed.

    It follows the WHATWG HTML standard's rules: lines end with CRLF, LF or
    CR; a leading byte-order mark is ignored; C{field: value} loses one
    space after the colon; C{data} lines accumulate; C{id} sets the last
    event ID (unless it holds a NUL); C{retry} sets the reconnection time
    if it is all digits; an empty line dispatches the message, unless it
    has no data; other fields are ignored. Comments are returned too,
    because a heartbeat proves the connection (and everything before it)
    arrived.

    @ivar retry: the reconnection time the server asked for, in
        milliseconds, or L{None}.
    @ivar last_event_id: the last event ID of the last dispatched message.
    """

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_bytes = max_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._at_start = True
        # A chunk that ended with CR: the LF of a CRLF may open the next one.
        self._skip_lf = False
        self._event = ""
        self._data: List[str] = []
        self._data_chars = 0
        self._id = ""
        self.last_event_id = ""
        self.retry: Optional[int] = None

    def feed(self, data: bytes) -> List[Union[ServerSentEvent, SSEComment]]:
        """
        Parse the next bytes of the stream.

        @return: the messages and comments they completed, in order.
        @raise ValueError: if a line or a message grows beyond
            C{max_bytes} (a broken or hostile server; nothing more should
            be read).
        """
        text = self._decoder.decode(data)
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        buffer = self._buffer + text
        out: List[Union[ServerSentEvent, SSEComment]] = []
        position = 0
        for match in _LINE_END.finditer(buffer):
            self._line(buffer[position : match.start()], out)
            position = match.end()
        self._skip_lf = position == len(buffer) and buffer.endswith("\r")
        self._buffer = buffer[position:]
        if len(self._buffer) > self._max_bytes:
            raise ValueError(
                "an event stream line is longer than %d characters" % (self._max_bytes,)
            )
        return out

    def _line(self, line: str, out: List[Union[ServerSentEvent, SSEComment]]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line.startswith(":"):
            out.append(SSEComment(line[1:].lstrip(" ")))
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
            if self._data_chars > self._max_bytes:
                raise ValueError("an event is larger than %d characters" % (self._max_bytes,))
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        elif field == "retry":
            if value.isdigit() and value.isascii():
                self.retry = int(value)

    def _dispatch(self, out: List[Union[ServerSentEvent, SSEComment]]) -> None:
        self.last_event_id = self._id
        if self._data:
            out.append(ServerSentEvent(self._event or "message", "\n".join(self._data), self._id))
        self._event = ""
        self._data = []
        self._data_chars = 0
