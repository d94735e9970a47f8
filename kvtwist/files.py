# -*- test-case-name: tests.unit.test_dumpload,tests.unit.test_snapshot -*-
"""
Writing a file whole or not at all: the output of a long command (a dump,
a snapshot) goes to a temporary file beside its destination, is synced,
and replaces the destination only once it is complete, so an interrupted
or failed run never leaves a half-written file under the name asked for.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Awaitable, BinaryIO, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")


@contextmanager
def whole_file(path: str, prefix: Optional[str] = None) -> Iterator[BinaryIO]:
    """
    A new temporary file beside C{path}, to write: when the block ends
    without error the file is synced and moved to C{path}; on any error
    (an interrupt included) it is removed and the error goes on.

    @param prefix: the temporary file's name prefix (default: a dot and
        C{path}'s own name, so it sorts beside it and stays hidden).
    """
    fd, temporary = tempfile.mkstemp(
        prefix=prefix if prefix is not None else ".%s." % (os.path.basename(path),),
        dir=os.path.dirname(os.path.abspath(path)),
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


async def write_whole(path: str, produce: Callable[[BinaryIO], Awaitable[T]]) -> T:
    """
    Run C{produce(f)} on a new temporary file beside C{path}; on success
    sync it and move it to C{path}, else remove it and let the failure out
    (L{whole_file}).

    @return: what C{produce} returned.
    """
    with whole_file(path) as f:
        return await produce(f)


def check_directory(path: str) -> None:
    """
    @raise ValueError: if the directory C{path} would be written in does
        not exist (said at once, before any work).
    """
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError("cannot write %s: no such directory" % (path,))
