# -*- test-case-name: tests.e2e.test_kit -*-
"""
pytest fixtures for code that talks to kvcache, with pytest-twisted.

pytest loads this plugin by itself once kvtwist is installed (it is
registered under the C{pytest11} entry point as C{kvtwist}); with
C{PYTEST_DISABLE_PLUGIN_AUTOLOAD} set, load it with C{-p kvtwist}.

Fixtures:

    - C{kvcache_server}: a L{kvtwist.testing.KVCacheServer} running in the
      test's process on a free 127.0.0.1 port, stopped after the test.
    - C{kvcache_url}: its base URL, C{"http://127.0.0.1:PORT"}.
    - C{kvcache_store}: the store it serves (a L{kvtwist.testing.MemoryStore}
      unless the marker asks for the disk), to seed or inspect.
    - C{kvcache_stub}: C{(StubTreq, MemoryStore)}, an in-memory kvcache with
      no network and no reactor (L{kvtwist.testing.memory_client}).

Options for the server come from a marker on the test (or its class or
module), passed to L{kvtwist.testing.KVCacheServer}; C{on_disk=True} keeps
the data in the shelve store under the test's C{tmp_path}:

    @pytest.mark.kvcache(on_disk=True, limits=Limits(max_body=1024))
    @pytest_twisted.ensureDeferred
    async def test_big_value_is_refused(kvcache_url): ...

The server fixtures run on pytest-twisted's reactor, so pytest-twisted must
be installed and active (it is a kvtwist test dependency, not a runtime
one; without it these fixtures fail with a message saying so).

Test order: a project that mixes trial TestCases (such as one with
L{kvtwist.testing.KVCacheServerMixin}) and pytest tests needs the trial
ones to run first. A pytest-twisted test starts the reactor in a greenlet
that keeps it "running" for the rest of the session; a trial TestCase that
then waits on a Deferred runs the reactor itself and fails with
C{DirtyReactorAggregateError}, though each passes alone. So this plugin
moves every unittest-style test (trial's included) before the others, in
the order collected otherwise; C{kvtwist_trial_first = false} in the
pytest ini file turns that off.
"""

from __future__ import annotations

import unittest
from typing import Any, Dict, List

import pytest

try:
    import pytest_twisted
except ImportError:  # pragma: no cover - exercised only without pytest-twisted
    pytest_twisted = None

__all__ = ["kvcache_server", "kvcache_url", "kvcache_store", "kvcache_stub"]

_MARKER = "kvcache"


def pytest_addoption(parser: Any) -> None:
    parser.addini(
        "kvtwist_trial_first",
        "run unittest-style tests (trial's) before pytest tests, which start "
        "pytest-twisted's reactor greenlet (default: true)",
        type="bool",
        default=True,
    )


def _is_unittest(item: Any) -> bool:
    cls = getattr(item, "cls", None)
    return isinstance(cls, type) and issubclass(cls, unittest.TestCase)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: Any, config: Any, items: List[Any]) -> None:
    """Every unittest-style test first, each group in its collected order."""
    if config.getini("kvtwist_trial_first"):
        items[:] = [i for i in items if _is_unittest(i)] + [
            i for i in items if not _is_unittest(i)
        ]


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "kvcache(**options): options of the in-process kvcache server of the "
        "kvcache_server / kvcache_url / kvcache_store fixtures "
        "(kvtwist.testing.KVCacheServer arguments, plus on_disk=True)",
    )


def _server_options(request: Any) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    # Closest marker last, so a test's own marker wins over its class's.
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        if marker.args:
            raise pytest.UsageError("@pytest.mark.kvcache takes keyword arguments only")
        options.update(marker.kwargs)
    if options.pop("on_disk", False) and options.get("data_dir") is None:
        options["data_dir"] = str(request.getfixturevalue("tmp_path") / "kvcache-data")
    return options


if pytest_twisted is not None:

    @pytest_twisted.async_yield_fixture
    async def kvcache_server(request: Any):
        """A kvcache served in process on 127.0.0.1 for one test."""
        from kvtwist.testing import KVCacheServer

        server = KVCacheServer(**_server_options(request))
        server.start()
        try:
            yield server
        finally:
            await server.stop()

else:  # pragma: no cover - exercised only without pytest-twisted

    @pytest.fixture
    def kvcache_server(request: Any):
        """A kvcache served in process (needs pytest-twisted)."""
        pytest.fail(
            "the kvcache_server fixture needs pytest-twisted: pip install pytest-twisted",
            pytrace=False,
        )


@pytest.fixture
def kvcache_url(kvcache_server: Any) -> str:
    """The base URL of C{kvcache_server}, without a trailing slash."""
    return kvcache_server.url


@pytest.fixture
def kvcache_store(kvcache_server: Any) -> Any:
    """The store C{kvcache_server} serves."""
    return kvcache_server.store


@pytest.fixture
def kvcache_stub() -> Any:
    """
    C{(StubTreq, MemoryStore)}: an in-memory kvcache for treq-style code,
    with no network. Its Deferreds fire at once; no reactor is needed.
    """
    from kvtwist.testing import memory_client

    return memory_client()
