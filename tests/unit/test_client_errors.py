"""
Tests for L{kvtwist.client.errors}: the readable form of L{KVClientError}.
"""

from __future__ import annotations

import http

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.client import KVClientError


class ErrorTests(SynchronousTestCase):
    """KVClientError's readable form."""

    def test_str_with_code_and_detail(self) -> None:
        """str() is '<status> <code>: <detail>'."""
        e = KVClientError(409, {"code": "conflict", "detail": "it moved", "title": "Conflict"})
        self.assertEqual(str(e), "409 conflict: it moved")
        self.assertEqual((e.code, e.detail), ("conflict", "it moved"))

    def test_str_falls_back_to_title_then_phrase(self) -> None:
        """Without detail the title is used, then the status phrase; without code none is shown."""
        self.assertEqual(str(KVClientError(413, {"title": "Too big"})), "413: Too big")
        # The phrase is the running Python's (3.13 says "Content Too Large").
        phrase = http.HTTPStatus(413).phrase
        self.assertEqual(str(KVClientError(413, {})), "413: " + phrase)
        self.assertEqual(str(KVClientError(599, {"code": 7})), "599: HTTP error")

    def test_problem_is_copied(self) -> None:
        """The problem dict is the error's own copy, and args carry status and problem."""
        problem = {"code": "x"}
        e = KVClientError(400, problem)
        problem["code"] = "y"
        self.assertEqual(e.problem, {"code": "x"})
        self.assertEqual(e.args, (400, {"code": "x"}))
