# -*- test-case-name: tests.unit.test_snapshot -*-
"""
Snapshot files (what C{GET /v1/snapshot} streams and C{kvtwist snapshot
save} keeps): L{read_snapshot} reads one back, checking its header and end
lines, and L{restore} builds a new data directory from one, offline,
keeping every key's revisions, version and expiry
(L{kvtwist.store.restore}), so a server started on it answers the same
values and ETags. The C{kvtwist snapshot} command is
L{kvtwist.cli.commands.snapshot}.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, Optional, Tuple

from kvtwist.errors import KVError
from kvtwist.model import Entry
from kvtwist.wire import decode_base64

__all__ = ["read_snapshot", "restore"]


def _timestamp(text: Any) -> Optional[float]:
    """An expiry as the server writes it (RFC 3339, UTC, milliseconds) as epoch seconds."""
    if text is None:
        return None
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _entry(line: bytes) -> Entry:
    document = json.loads(line)
    return Entry(
        document["key"],
        decode_base64(document["value_base64"]),
        document["content_type"],
        document["create_revision"],
        document["mod_revision"],
        document["version"],
        _timestamp(document["expires"]),
    )


def read_snapshot(path: str) -> Tuple[int, Iterator[Entry]]:
    """
    The revision of the snapshot in file C{path} and its entries, read as
    they are consumed; the last one is followed by a check of the end line.

    @raise ValueError: (at once, or from the iteration) naming the line, if
        the file is not a whole kvtwist snapshot.
    """
    try:
        source = open(path, "rb")
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e))
    try:
        header = json.loads(source.readline() or b"null")
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("snapshot") != "kvtwist" or header.get("format") != 1:
        source.close()
        raise ValueError("%s is not a kvtwist snapshot (format 1)" % (path,))
    revision = header["revision"]

    def entries() -> Iterator[Entry]:
        with source:
            count = 0
            for number, line in enumerate(source, 2):
                try:
                    document = json.loads(line)
                    if isinstance(document, dict) and document.get("end") is True:
                        if document.get("keys") != count or document.get("revision") != revision:
                            raise ValueError("the end line does not match the snapshot")
                        return
                    count += 1
                    yield _entry(line)
                except (ValueError, KeyError, TypeError) as e:  # bad base64 included
                    raise ValueError("%s line %d: %s" % (path, number, e))
            raise ValueError("%s has no end line: the snapshot was cut short" % (path,))

    return revision, entries()


def restore(path: str, directory: str) -> Dict[str, Any]:
    """Build data directory C{directory} from snapshot file C{path} (offline)."""
    from kvtwist.store.restore import restore_data_dir

    revision, entries = read_snapshot(path)
    try:
        keys = restore_data_dir(directory, revision, entries)
    except (OSError, KVError) as e:
        # A directory that cannot be made, a full disk: the usage is fine,
        # the place is not; said in one line like a bad FILE.
        raise ValueError("cannot restore into %s: %s" % (directory, e))
    return {"revision": revision, "keys": keys, "data": directory}
