"""
Test-case-name headers, as Twisted writes them (a first line such as
C{# -*- test-case-name: tests.unit.test_cache -*-}): the first line of a
module names the test modules that test it, for
C{trial --testmodule} on a kvtwist module and for editors that run "the tests of
this file". A header that names a module that was moved or renamed runs
nothing, silently; these tests keep every header pointing at a test module
that exists.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Dict, List

from twisted.scripts.trial import getTestModules
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.paths import REPO

#: The trees whose modules may carry a header.
TREES = ("kvtwist", "tests")

MARKER = "test-case-name"


def python_files() -> List[str]:
    """Every C{.py} file under L{TREES}, as a path relative to the checkout."""
    found: List[str] = []
    for tree in TREES:
        for directory, subdirectories, names in os.walk(os.path.join(REPO, tree)):
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
            found.extend(
                os.path.relpath(os.path.join(directory, name), REPO)
                for name in sorted(names)
                if name.endswith(".py")
            )
    return found


def headers() -> Dict[str, List[str]]:
    """Each file that has a header, with the module names it lists (as trial reads them)."""
    named: Dict[str, List[str]] = {}
    for path in python_files():
        modules = [m.strip() for m in getTestModules(os.path.join(REPO, path)) if m.strip()]
        if modules:
            named[path] = modules
    return named


def exists(module: str) -> bool:
    """Whether C{module} can be imported from the checkout (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # A missing parent package raises instead of answering None.
        return False


class TestCaseNameTests(SynchronousTestCase):
    """Every test-case-name header names test modules that exist."""

    def test_headers_name_existing_modules(self) -> None:
        """
        Every module listed in every header under kvtwist/ and tests/
        exists; the failure lists each stale header with its file.
        """
        stale = [
            "%s: %s" % (path, module)
            for path, modules in sorted(headers().items())
            for module in modules
            if not exists(module)
        ]
        self.assertEqual(
            stale, [],
            "test-case-name headers naming no module (file: module):\n  " + "\n  ".join(stale),
        )

    def test_headers_are_where_trial_reads_them(self) -> None:
        """
        A line mentioning test-case-name sits in a file's first two lines
        and parses as trial parses it; anywhere else trial ignores it.
        """
        with_marker = []
        for path in python_files():
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                if any(
                    line.lstrip().startswith("#") and "-*-" in line and MARKER in line
                    for line in f
                ):
                    with_marker.append(path)
        self.assertEqual(sorted(with_marker), sorted(headers()))

    def test_kvtwist_has_headers(self) -> None:
        """
        The check above has something to check: the package's modules carry
        headers (a regression that drops them all would pass it vacuously).
        """
        in_package = [path for path in headers() if path.startswith("kvtwist" + os.sep)]
        self.assertGreater(len(in_package), 20, in_package)

    def test_a_stale_name_is_caught(self) -> None:
        """The existence check says no for a moved module and a missing package."""
        self.assertTrue(exists("tests.unit.test_test_case_names"))
        self.assertFalse(exists("tests.test_client"))
        self.assertFalse(exists("tests.no_such_package.test_x"))
