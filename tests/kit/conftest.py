"""
Keep the pytest-twisted example last in a mixed session.

C{test_pytest_example.py} uses pytest-twisted's reactor greenlet, which,
once started, keeps the reactor "running" for the rest of the session.
kvtwist's own suite is trial C{TestCase}s, and a trial TestCase runs the
reactor itself for each test (C{TestCase._wait} calls C{reactor.run()}):
after the greenlet has started, that fails (dirty reactors, tests cut
short). So in a session that collects both, the pytest-twisted tests of
this directory run after everything else. A downstream suite written in
one style does not need this.
"""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
#: The modules of this directory that use pytest-twisted's greenlet.
GREENLET_MODULES = {os.path.join(HERE, "test_pytest_example.py")}


def pytest_collection_modifyitems(session, config, items) -> None:
    last = [item for item in items if str(item.path) in GREENLET_MODULES]
    if last:
        first = [item for item in items if str(item.path) not in GREENLET_MODULES]
        items[:] = first + last
