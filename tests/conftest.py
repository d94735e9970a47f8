"""
Test ordering for a suite that mixes trial TestCases and pytest-twisted.

A plain pytest test (or a pytest-twisted one) starts pytest-twisted's
reactor greenlet, which keeps the reactor "running" for the rest of the
session; a trial TestCase that waits on a Deferred runs the reactor itself
(C{TestCase._wait}), which then fails with unclean reactors. So every
unittest-style test runs first, and the rest after them.
"""

from _pytest.unittest import TestCaseFunction


def pytest_collection_modifyitems(session, config, items) -> None:
    trial = [item for item in items if isinstance(item, TestCaseFunction)]
    others = [item for item in items if not isinstance(item, TestCaseFunction)]
    items[:] = trial + others
