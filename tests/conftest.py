"""
Test ordering for a suite that mixes trial TestCases and pytest-twisted.

A plain pytest test (or a pytest-twisted one) starts pytest-twisted's
reactor greenlet, which keeps the reactor "running" for the rest of the
session; a trial TestCase that waits on a Deferred runs the reactor itself
(C{TestCase._wait}), which then fails with unclean reactors. So every
unittest-style test runs first, and the rest after them: kvtwist's own
pytest plugin (L{kvtwist.pytest_plugin}, loaded through its entry point)
orders them so, for this suite as for every downstream one.

Under pytest-xdist each worker is a session of its own and must keep that
order too. C{./run.sh test} runs C{-n 2 --dist loadscope
--no-loadscope-reorder}: xdist then hands out whole classes (and a module's
plain test functions as one unit) in the order collected here, and each
worker runs what it gets in that order, so on every worker the trial classes
come before the pytest-style tests; a class's tests also stay on one worker,
so its C{setUpClass} and the things its tests share (one server, one etcd,
one crash loop) happen once, as in a serial run. C{--dist load} keeps the
order as well but splits classes; C{--dist worksteal}, and the reordering
that C{loadscope} does by default, do not keep it.
"""

import shlex
import sys

import pytest


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config, specs) -> None:
    # xdist starts its workers with a bare sys.executable: they would run
    # without the -b of "python -b -m pytest", and pytest.ini's
    # error::BytesWarning would then check nothing.
    flags = ["-b"] * sys.flags.bytes_warning
    for spec in specs:
        if flags and spec.popen and not spec.python:
            spec.python = shlex.join([sys.executable] + flags)


def pytest_configure(config) -> None:
    # Only the controller of an xdist run sees its --dist; workers see "no".
    dist = getattr(config.option, "dist", "no")
    reordered = dist in ("loadscope", "loadfile") and getattr(
        config.option, "loadscopereorder", False
    )
    if dist == "worksteal" or reordered:
        raise pytest.UsageError(
            "--dist %s%s would run pytest-style tests before trial ones on a "
            "worker (see tests/conftest.py): use --dist loadscope "
            "--no-loadscope-reorder, as ./run.sh test does, or --dist load"
            % (dist, " without --no-loadscope-reorder" if reordered else "")
        )
