# -*- test-case-name: tests.unit.test_cli -*-
"""
SIGINT and SIGTERM for the C{kvtwist} command: a signal stops the command
the way a failure would, so that its clean-up runs (temporary files
removed, a load's checkpoint kept) and it exits 128 + the signal's number
(130, 143) with a word on stderr, instead of the reactor stopping under
it and the command exiting 0 as if it had finished.

L{Interrupts} is installed by the console script (L{kvtwist.cli.runner.run}) and
handed to L{kvtwist.cli.runner.main}, which calls L{Interrupts.guard} with the
command's Deferred once it is running. Twisted installs its own SIGINT and
SIGTERM handlers (which stop the reactor) when the reactor starts, so the
script installs these again once it runs.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from twisted.internet.defer import Deferred

__all__ = ["Interrupted", "Interrupts", "SIGNALS"]

#: The signals that interrupt a command.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """
    A signal arrived before the command's Deferred existed (while its
    arguments or input were read): raised where the program was, like
    C{KeyboardInterrupt}, so the code unwinding cleans up as it goes.

    @ivar signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Interrupts:
    """
    Turns SIGINT and SIGTERM into a cancellation of the command's Deferred.

    @ivar signum: the first signal received, or L{None}.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._target: Optional[Deferred] = None
        self.signum: Optional[int] = None

    @property
    def exit_code(self) -> int:
        """The shell's code for a death by the signal received: 128 + its number."""
        assert self.signum is not None
        return 128 + self.signum

    def install(self) -> None:
        """Handle the signals here (again after the reactor took them)."""
        for signum in SIGNALS:
            signal.signal(signum, self._received)

    def guard(self, d: Deferred) -> None:
        """Cancel C{d}, the running command, on the first signal."""
        self._target = d
        if self.signum is not None:
            self._reactor.callFromThread(d.cancel)

    def _received(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            # A second signal while the first one's clean-up runs: the
            # user insists, so die by it as a program without handlers would.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self._target is None:
            raise Interrupted(signum)
        # From the handler to the reactor thread, as Twisted's own handlers do.
        self._reactor.callFromThread(self._target.cancel)
