"""
Tests for L{kvtwist.gcfreeze}: startup's objects are frozen once, when the
reactor runs, after a full collection. The real C{gc.freeze} is never
called here: it would freeze the test runner's own objects.
"""

from __future__ import annotations

from typing import Any, Callable, List

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.gcfreeze import FreezeStartupObjects, freeze_startup


class RecordingReactor:
    """Keeps what is asked to run when the reactor runs, to run it later."""

    def __init__(self) -> None:
        self.when_running: List[Callable[[], Any]] = []

    def callWhenRunning(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.when_running.append(lambda: f(*args, **kwargs))

    def run(self) -> None:
        for f in self.when_running:
            f()


class FreezeTests(SynchronousTestCase):
    """When and how startup's objects are frozen."""

    def test_collects_before_freezing(self) -> None:
        """freeze_startup collects garbage first, so no garbage of startup is frozen for good."""
        calls: List[str] = []
        freeze_startup(collect=lambda: calls.append("collect"), freeze=lambda: calls.append("freeze"))
        self.assertEqual(calls, ["collect", "freeze"])

    def test_freezes_once_the_reactor_runs(self) -> None:
        """The service freezes nothing when it starts, and once when the reactor then runs."""
        reactor = RecordingReactor()
        frozen: List[int] = []
        service = FreezeStartupObjects(reactor, lambda: frozen.append(1))
        service.startService()
        self.assertEqual(frozen, [])
        reactor.run()
        self.assertEqual(frozen, [1])
