"""
The documentation agrees with the code: docs/api.md carries the route table
generated from docs/openapi.yaml (run C{python -m tests.unit.test_docs} to
regenerate it after changing the spec).
"""

import os
import sys

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.paths import REPO

ROOT = REPO
API_MD = os.path.join(ROOT, "docs", "api.md")
SPEC = os.path.join(ROOT, "docs", "openapi.yaml")
BEGIN = "<!-- routes: generated from docs/openapi.yaml by tests/unit/test_docs.py -->"
END = "<!-- end of routes -->"
METHODS = ("get", "head", "put", "post", "delete", "patch")


def route_table() -> str:
    """The Markdown table of every route in the OpenAPI document."""
    with open(SPEC, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    lines = ["| method | path | what it does | statuses |", "|---|---|---|---|"]
    for path, item in spec["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            summary = " ".join(op.get("summary", "").split()).replace("|", "\\|")
            statuses = ", ".join(sorted(op.get("responses", {})))
            lines.append("| %s | `%s` | %s | %s |" % (method.upper(), path, summary, statuses))
    return "\n".join([BEGIN] + lines + [END])


def current_table() -> str:
    with open(API_MD, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def rewrite() -> None:
    """Replace the generated table in docs/api.md."""
    with open(API_MD, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    with open(API_MD, "w", encoding="utf-8") as f:
        f.write(text[:start] + route_table() + text[end:])


class ApiDocTests(SynchronousTestCase):
    """docs/api.md lists exactly the routes of docs/openapi.yaml."""

    def test_route_table_is_current(self):
        """The generated route table in api.md matches the OpenAPI document."""
        self.assertEqual(
            current_table(), route_table(),
            "docs/api.md is out of date: run python -m tests.unit.test_docs",
        )


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
