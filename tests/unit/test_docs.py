"""
The documentation agrees with the code: docs/api.md carries the route table
generated from docs/openapi.yaml (run C{python -m tests.unit.test_docs} to
regenerate it after changing docs/openapi.yaml); every relative link, every
repository path and every C{docs/FILE.md, "Section"} pointer in the docs and
in module docstrings leads somewhere; and docs/errors.md lists every problem
code the server answers.
"""

import ast
import glob
import os
import re
import sys
from typing import Iterator, List, Tuple

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.paths import REPO

ROOT = REPO
API_MD = os.path.join(ROOT, "docs", "api.md")
OPENAPI = os.path.join(ROOT, "docs", "openapi.yaml")
BEGIN = "<!-- routes: generated from docs/openapi.yaml by tests/unit/test_docs.py -->"
END = "<!-- end of routes -->"
METHODS = ("get", "head", "put", "post", "delete", "patch")


def route_table() -> str:
    """The Markdown table of every route in the OpenAPI document."""
    with open(OPENAPI, encoding="utf-8") as f:
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


#: The Markdown documents whose links and paths are checked.
MARKDOWN = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [
    os.path.join(ROOT, name)
    for name in ("README.md", "CHANGELOG.md", "benchmarks/README.md", "examples/README.md")
]
#: The Python trees whose module docstrings (paths) and text (pointers) are checked.
PYTHON_TREES = ("kvtwist", "tests", "benchmarks", "examples", "twisted")
#: A Markdown link: [text](target).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: A repository path named in prose: docs/..., tests/..., kvtwist/...
REPO_PATH = re.compile(
    r"(?<![\w./:-])((?:docs|tests|kvtwist|benchmarks|examples|contrib)/[\w./*-]*[\w/*])"
)
#: A pointer to a section: docs/api.md, "Watching" (or api.md "Watching").
POINTER = re.compile(r'((?:docs/)?[\w-]+\.md)(?:,| \(| section| under)?\s+"([^"]{3,80})"')


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _python_files() -> List[str]:
    found: List[str] = []
    for tree in PYTHON_TREES:
        found += glob.glob(os.path.join(ROOT, tree, "**", "*.py"), recursive=True)
    return sorted(f for f in found if "/.venv/" not in f)


def _flat(text: str) -> str:
    """Text with comment markers, backquotes and line breaks folded away."""
    return " ".join(re.sub(r"(?m)^\s*#:?", " ", text).replace("`", "").split())


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: str) -> set:
    return {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", _read(path))}


def _names_a_file(path: str) -> bool:
    """
    A path worth checking: a file with an extension, a glob or a folder
    (C{kvtwist/VERSION} in C{User-Agent: kvtwist/VERSION} is no path).
    """
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if _placeholder(last):
        return False
    return path.endswith("/") or "." in last or "*" in path


def _placeholder(name: str) -> bool:
    """C{FILE.md}, C{SCRIPT.py}: a name standing for any, in capitals."""
    stem = name.split(".", 1)[0]
    return stem.isupper()


def _missing_paths(where: str, text: str) -> Iterator[Tuple[str, str]]:
    for path in REPO_PATH.findall(text):
        path = path.rstrip(".")
        if not _names_a_file(path):
            continue
        full = os.path.join(ROOT, path)
        if not (glob.glob(full) if "*" in path else os.path.exists(full)):
            yield where, path


class DocLinkTests(SynchronousTestCase):
    """What the docs and docstrings point at exists."""

    def test_markdown_links_resolve(self):
        """Every relative link of the Markdown docs names a file, and its anchor a heading."""
        broken = []
        for md in MARKDOWN:
            for target in LINK.findall(_read(md)):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):
                    continue
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
                rel = os.path.relpath(md, ROOT)
                if not os.path.exists(full):
                    broken.append((rel, target))
                elif anchor and full.endswith(".md") and anchor not in _anchors(full):
                    broken.append((rel, target))
        self.assertEqual(broken, [])

    def test_paths_in_docs_exist(self):
        """Every docs/, tests/, kvtwist/... path the Markdown docs name exists."""
        missing = []
        for md in MARKDOWN:
            missing += _missing_paths(os.path.relpath(md, ROOT), _read(md))
        self.assertEqual(missing, [])

    def test_paths_in_module_docstrings_exist(self):
        """Every docs/, tests/, kvtwist/... path a module docstring names exists."""
        missing = []
        for source in _python_files():
            docstring = ast.get_docstring(ast.parse(_read(source)))
            if docstring:
                missing += _missing_paths(os.path.relpath(source, ROOT), docstring)
        self.assertEqual(missing, [])

    def test_section_pointers_resolve(self):
        """
        Every C{docs/FILE.md, "Section"} pointer in code, tests and docs names
        a document holding that text (a heading or a bold lead).
        """
        broken = []
        for source in _python_files() + MARKDOWN:
            for doc, phrase in POINTER.findall(_flat(_read(source))):
                if _placeholder(os.path.basename(doc)):
                    continue
                if doc.startswith("docs/") or doc == "README.md":
                    path = os.path.join(ROOT, doc)
                else:
                    path = os.path.join(os.path.dirname(source), doc)
                    if not os.path.exists(path):
                        path = os.path.join(ROOT, "docs", doc)
                if not os.path.exists(path) or phrase not in _flat(_read(path)):
                    broken.append((os.path.relpath(source, ROOT), doc, phrase))
        self.assertEqual(broken, [])


def _emitted_codes() -> set:
    """
    The problem codes the server can answer: those the OpenAPI document
    lists, the codes of the domain errors, and those the web layer names
    where it refuses a request.
    """
    with open(OPENAPI, encoding="utf-8") as f:
        codes = set(yaml.safe_load(f)["components"]["schemas"]["ProblemCode"]["enum"])
    from kvtwist import errors

    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.KVError):
            codes.add(value.code)
    codes.discard(errors.KVError.code)
    raised = re.compile(r'(?:InvalidInput|problem_body|\.refuse)\(\s*(?:\d+,\s*)?"([a-z][a-z0-9-]*)"')
    for source in glob.glob(os.path.join(ROOT, "kvtwist", "**", "*.py"), recursive=True):
        if os.sep + "client" + os.sep not in source:
            codes.update(raised.findall(_read(source)))
    return codes


class ErrorsDocTests(SynchronousTestCase):
    """docs/errors.md and docs/openapi.yaml describe every problem the server answers."""

    def test_openapi_lists_every_code(self):
        """The ProblemCode enum of docs/openapi.yaml holds every code the server can answer."""
        with open(OPENAPI, encoding="utf-8") as f:
            enum = set(yaml.safe_load(f)["components"]["schemas"]["ProblemCode"]["enum"])
        self.assertEqual(sorted(_emitted_codes() - enum), [])

    def test_every_code_is_listed(self):
        """Each code the server can answer has a row in docs/errors.md with its type URI."""
        text = _read(os.path.join(ROOT, "docs", "errors.md"))
        missing = sorted(
            code for code in _emitted_codes()
            if "| `%s` | `urn:kvtwist:error:%s` |" % (code, code) not in text
        )
        self.assertEqual(missing, [])


if __name__ == "__main__":
    rewrite()
    sys.exit(0)
