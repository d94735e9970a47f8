"""
Writing a file whole or not at all: the output of a long command (a dump,
a snapshot) goes to a temporary file beside its destination, is synced,
and replaces the destination only once it is complete, so an interrupted
or failed run never leaves a half-written file under the name asked for.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Awaitable, BinaryIO, Callable, TypeVar

T = TypeVar("T")


async def write_whole(path: str, produce: Callable[[BinaryIO], Awaitable[T]]) -> T:
    """
    Run C{produce(f)} on a new temporary file beside C{path}; on success
    sync it and move it to C{path}, else remove it and let the failure out.

    @return: what C{produce} returned.
    """
    fd, temporary = tempfile.mkstemp(
        prefix=".%s." % (os.path.basename(path),), dir=os.path.dirname(os.path.abspath(path))
    )
    try:
        with os.fdopen(fd, "wb") as f:
            result = await produce(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return result


def check_directory(path: str) -> None:
    """
    @raise ValueError: if the directory C{path} would be written in does
        not exist (said at once, before any work).
    """
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError("cannot write %s: no such directory" % (path,))
