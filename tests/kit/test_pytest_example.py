"""
A downstream pytest-twisted module using kvtwist's fixtures, written the
way a user of kvtwist would write it (it is also the pytest example in
C{docs/testing.md}).

No conftest provides the fixtures: pytest finds them through kvtwist's
C{pytest11} entry point. It runs in the main suite, and C{tests.e2e.test_kit}
runs it again in a subprocess (with and without plugin autoloading) to
check that.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import treq

from kvtwist import client
from kvtwist.limits import Limits
from kvtwist.model import Put

pytestmark = pytest.mark.filterwarnings(
    # Twisted's own header cache trips BytesWarning under python -b.
    "ignore::BytesWarning:.*twisted.web.http_headers"
)


async def enable_flag(http, url: str, name: str) -> int:
    """The "code under test": turn a feature flag on, return its revision."""
    result = await client.put(
        http, url, "flags/" + name, b"true", content_type="application/json"
    )
    return result["mod_revision"]


def test_stub_needs_no_reactor(kvcache_stub) -> None:
    """kvcache_stub: StubTreq over a MemoryStore; Deferreds fire at once."""
    http, store = kvcache_stub
    results = []
    client.put(http, "http://kv.test", "k", b"v").addCallback(results.append)
    assert results and results[0]["created"] is True
    assert store.rows["k"].value == b"v"


@pytest_twisted.ensureDeferred
async def test_flag_over_tcp(kvcache_url) -> None:
    """kvcache_url: a real kvcache on 127.0.0.1, reached with the treq module."""
    assert kvcache_url.startswith("http://127.0.0.1:")
    revision = await enable_flag(treq, kvcache_url, "beta")
    entry = await client.get_entry(treq, kvcache_url, "flags/beta")
    assert (entry.value, entry.mod_revision) == (b"true", revision)


@pytest_twisted.ensureDeferred
async def test_seeded_store(kvcache_url, kvcache_store) -> None:
    """kvcache_store: what the test commits to it is served at once."""
    await kvcache_store.commit([Put("config/mode", b'"fast"', "application/json")])
    assert await client.get(treq, kvcache_url, "config/mode") == "fast"


@pytest.mark.kvcache(limits=Limits(max_body=16))
@pytest_twisted.ensureDeferred
async def test_marker_sets_limits(kvcache_url) -> None:
    """@pytest.mark.kvcache passes options to the server: here a tiny body cap."""
    with pytest.raises(client.KVClientError) as raised:
        await client.put(treq, kvcache_url, "big", b"x" * 17)
    assert raised.value.status == 413


@pytest.mark.kvcache(on_disk=True)
@pytest_twisted.ensureDeferred
async def test_on_disk(kvcache_server, tmp_path) -> None:
    """on_disk=True keeps the data in the shelve store under tmp_path."""
    await client.put(treq, kvcache_server.url, "kept", b"1")
    assert (tmp_path / "kvcache-data").is_dir()
    assert kvcache_server.store.revision == 1


@pytest_twisted.ensureDeferred
async def test_fresh_server_per_test(kvcache_url) -> None:
    """Each test gets an empty store: nothing written by other tests is there."""
    page = await client.list_keys(treq, kvcache_url)
    assert page["items"] == []
