"""
Helpers for in-memory tests of the Resource tree through
C{treq.testing.StubTreq}: issue a request, get back status, headers and the
decoded body, synchronously.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

from treq.testing import StubTreq
from zope.interface import implementer_only

from kvtwist.interfaces import IKeyValueStore
from kvtwist.testing import MemoryStore


@dataclass
class Answer:
    """One response, read whole."""

    status: int
    headers: Any
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of header C{name}, decoded, or None."""
        values = self.headers.getRawHeaders(name.encode("latin-1"))
        return values[0].decode("latin-1") if values else None

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def content_type(self) -> Optional[str]:
        return self.header("content-type")


class TreeClient:
    """Synchronous requests against a Resource tree, for SynchronousTestCase."""

    def __init__(self, testcase, resource, base: str = "http://kv.test") -> None:
        self.testcase = testcase
        self.stub = StubTreq(resource)
        self.base = base

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        json_body: Any = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> Answer:
        """Send one request; C{json_body} is encoded as JSON for you."""
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
        if isinstance(body, str):
            body = body.encode("utf-8")
        d = self.stub.request(
            method,
            self.base + path,
            data=body,
            # Bytes names: Twisted's header cache mixes str and bytes keys,
            # which trips -b -W error::BytesWarning with str names.
            headers={
                k.encode("latin-1"): [v.encode("latin-1")]
                for k, v in (headers or {}).items()
            },
        )
        self.stub.flush()
        response = self.testcase.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        return Answer(response.code, response.headers, self.testcase.successResultOf(content))

    def problem(self, method: str, path: str, status: int, code: str, **kw) -> Answer:
        """Send a request that must fail with C{status} and problem C{code}."""
        answer = self.request(method, path, **kw)
        t = self.testcase
        t.assertEqual(answer.status, status, answer.body)
        t.assertEqual(answer.content_type, "application/problem+json")
        problem = answer.json
        t.assertEqual(problem["status"], status)
        t.assertEqual(problem["code"], code, problem)
        for field in ("type", "title", "detail"):
            t.assertIn(field, problem)
        return answer


@implementer_only(IKeyValueStore)
class StoreWithoutHistory(MemoryStore):
    """A memory store that does not claim IHistoricalStore (as the etcd store)."""
