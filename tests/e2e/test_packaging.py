"""
Packaging: what a user gets from C{python -m build} and C{pip install}.

The working tree (the files git tracks or would track: C{.gitignore}d ones
left out) is copied to a temporary directory and built there with
C{python -m build} (the metadata in pyproject.toml, setup.py a shim), as a
user would build a release, so nothing is written into the source tree.
Then: C{twine check} passes on the sdist and the wheel; the wheel holds the
package, its static files, C{py.typed}, the LICENSE and the twistd dropin
(and no C{__init__.py} in C{twisted/} or C{twisted/plugins/}), carries the
license, URLs and dependencies of pyproject.toml, and declares
the C{kvtwist} console script and the C{pytest11} plugin; installed into a
fresh venv (dependencies from the package index), C{twistd kvcache --help}
and C{kvtwist --help} work, and the downstream pytest example passes there
with the fixtures found through the wheel's entry point.

The slowest module of the suite (about a minute: two isolated builds and
two installs, done once and shared by the tests); skipped, with the
reason, when C{build} is not installed, git is not there to list the
files, or no package index can be reached.

Written as trial test cases, not pytest functions: under pytest-twisted a
plain pytest function starts the reactor greenlet, after which the
suite's asynchronous trial tests can no longer run the reactor.
"""

from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Dict, List, Optional
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers.paths import REPO

HERE = os.path.join(REPO, "tests")
#: The version the distribution files are named after.
VERSION = __import__("kvtwist").__version__

#: Seconds for one build or install step: generous, for a busy machine.
STEP_TIMEOUT = 300

#: What pip or build print when no package index can be reached.
OFFLINE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|"
    r"Failed to establish a new connection|Temporary failure in name resolution|"
    r"Network is unreachable"
)


class StepFailed(AssertionError):
    """A build or install step failed for another reason than the network."""


def step_env() -> Dict[str, str]:
    """
    The environment of build and install steps: no bytecode compiling by
    pip (it doubles the time of an install on a busy machine, and nothing
    here needs it), and no pytest variables of the outer run.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PIP_NO_COMPILE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def run(args: List[str], cwd: str, what: str) -> subprocess.CompletedProcess:
    """
    Run one step.

    @raise SkipTest: if it failed for want of a package index.
    @raise StepFailed: if it failed otherwise (with its output).
    """
    result = subprocess.run(
        args, cwd=cwd, env=step_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=STEP_TIMEOUT,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        offline = OFFLINE.search(output)
        if offline:
            raise SkipTest("%s needs a reachable package index: %s" % (what, offline.group(0)))
        raise StepFailed("%s failed (exit %d):\n%s" % (what, result.returncode, output[-6000:]))
    return result


def source_files() -> List[str]:
    """The files of the working tree that git tracks or would track."""
    # .git is a directory in a clone and a file in a git worktree.
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
        raise SkipTest("git and a git checkout are needed to list the source files")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode("utf-8")
    # --cached also names files deleted in the working tree: skip those.
    return [p for p in listing.split("\0") if p and os.path.isfile(os.path.join(REPO, p))]


class _Shared:
    """
    The build and the venv, made once for every test of the module (each
    costs tens of seconds) in one temporary directory removed at exit. A
    step that failed or was skipped is remembered, so each test reports it
    without trying again.
    """

    def __init__(self) -> None:
        self.workdir: Optional[str] = None
        self.results: Dict[str, object] = {}

    def dir(self) -> str:
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="kvtwist-packaging-")
            atexit.register(shutil.rmtree, self.workdir, True)
        return self.workdir

    def once(self, name: str, make) -> object:
        if name not in self.results:
            try:
                self.results[name] = make()
            except (SkipTest, AssertionError, OSError, subprocess.SubprocessError) as e:
                self.results[name] = e
        result = self.results[name]
        if isinstance(result, BaseException):
            raise result
        return result


SHARED = _Shared()


def build_dist() -> Dict[str, str]:
    """Build the sdist and the wheel from a copy of the tree: their paths."""
    if importlib.util.find_spec("build") is None:
        raise SkipTest("the packaging tests need `build` (pip install build)")
    workdir = SHARED.dir()
    source = os.path.join(workdir, "src")
    for path in source_files():
        target = os.path.join(source, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, path), target)
    out = os.path.join(workdir, "dist")
    run([sys.executable, "-m", "build", "--outdir", out, source], workdir, "python -m build")
    sdists = glob.glob(os.path.join(out, "kvtwist-*.tar.gz"))
    wheels = glob.glob(os.path.join(out, "kvtwist-*-py3-none-any.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise StepFailed("expected one sdist and one wheel: %s" % (os.listdir(out),))
    return {"sdist": sdists[0], "wheel": wheels[0]}


def make_venv() -> str:
    """
    A fresh venv with the wheel installed the ordinary way (dependencies
    from the index); its bin directory. Made without pip of its own and
    filled with this interpreter's pip (C{pip --python}): the same install,
    without ensurepip's half minute.
    """
    dist = SHARED.once("dist", build_dist)
    workdir = SHARED.dir()
    path = os.path.join(workdir, "venv")
    run([sys.executable, "-m", "venv", "--without-pip", path], workdir, "python -m venv")
    python = os.path.join(path, "bin", "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", dist["wheel"]],  # type: ignore[index]
        workdir, "pip install of the wheel")
    return os.path.join(path, "bin")


def example_count() -> int:
    with open(os.path.join(HERE, "kit", "test_pytest_example.py"), encoding="utf-8") as f:
        return len(re.findall(r"^\s*(?:async\s+)?def test_", f.read(), re.M))


class DistributionTests(SynchronousTestCase):
    """The sdist and the wheel python -m build makes."""

    def setUp(self) -> None:
        self.dist: Dict[str, str] = SHARED.once("dist", build_dist)  # type: ignore[assignment]

    def test_twine_check(self) -> None:
        """twine check passes on both the sdist and the wheel (metadata, README rendering)."""
        if importlib.util.find_spec("twine") is None:
            raise SkipTest("twine is not installed (pip install twine)")
        result = run([sys.executable, "-m", "twine", "check", "--strict", self.dist["sdist"],
                      self.dist["wheel"]], SHARED.dir(), "twine check")
        self.assertEqual(result.stdout.count("PASSED"), 2, result.stdout)

    def test_wheel_contents(self) -> None:
        """
        The wheel holds the package and the dropin, the static files, no tests,
        no __init__.py in the twisted namespace, and both entry points.
        """
        with zipfile.ZipFile(self.dist["wheel"]) as wheel:
            names = set(wheel.namelist())
            entry_points = wheel.read(
                next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
            ).decode("utf-8")
        for required in ("kvtwist/__init__.py", "kvtwist/testing.py",
                         "kvtwist/pytest_plugin.py", "kvtwist/dumpload.py",
                         "kvtwist/py.typed", "twisted/plugins/kvtwist_kvcache.py",
                         "kvtwist-%s.dist-info/licenses/LICENSE" % (VERSION,)):
            self.assertIn(required, names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertEqual(
            [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))], []
        )
        static = os.path.join(REPO, "kvtwist", "web", "static")
        for root, _, files in os.walk(static):
            for name in files:
                relative = os.path.relpath(os.path.join(root, name), REPO).replace(os.sep, "/")
                self.assertIn(relative, names, "static file missing from the wheel")
        self.assertRegex(entry_points, re.compile(r"^kvtwist = kvtwist\.cli:run$", re.M))
        self.assertRegex(
            entry_points,
            re.compile(r"^\[pytest11\]\nkvtwist = kvtwist\.pytest_plugin$", re.M),
        )

    def test_metadata(self) -> None:
        """
        The wheel's metadata comes from pyproject.toml: the version of
        kvtwist.__version__, the MIT license with its LICENSE file, the
        project URLs, the dependencies and the extras.
        """
        with zipfile.ZipFile(self.dist["wheel"]) as wheel:
            metadata = wheel.read("kvtwist-%s.dist-info/METADATA" % (VERSION,)).decode("utf-8")
        headers = metadata.split("\n\n", 1)[0].splitlines()
        self.assertIn("Version: %s" % (VERSION,), headers)
        self.assertIn("License-Expression: MIT", headers)
        self.assertIn("License-File: LICENSE", headers)
        urls = [h for h in headers if h.startswith("Project-URL: ")]
        self.assertEqual([u.split(": ", 1)[1].split(",")[0] for u in urls],
                         ["Homepage", "Documentation", "Changelog", "Issues"])
        self.assertTrue(any(h.startswith("Requires-Dist: twisted[tls]") for h in headers))
        self.assertIn("Provides-Extra: test", headers)
        with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
            self.assertTrue(f.read().startswith("MIT License\n"))

    def test_sdist_contents(self) -> None:
        """
        The sdist carries pyproject.toml, the setup.py shim, LICENSE, the
        README and the dropin (the wheel was built from it).
        """
        with tarfile.open(self.dist["sdist"]) as sdist:
            names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
        self.assertLessEqual(
            {"pyproject.toml", "setup.py", "LICENSE", "README.md",
             "twisted/plugins/kvtwist_kvcache.py", "kvtwist/pytest_plugin.py", "kvtwist/py.typed"},
            names,
        )


class InstalledWheelTests(SynchronousTestCase):
    """The wheel installed into a fresh venv."""

    def setUp(self) -> None:
        self.bin: str = SHARED.once("venv", make_venv)  # type: ignore[assignment]

    def test_twistd_kvcache_help(self) -> None:
        """twistd finds the kvcache plugin and prints its options."""
        result = run([os.path.join(self.bin, "twistd"), "kvcache", "--help"], SHARED.dir(),
                     "twistd kvcache --help")
        self.assertIn("--data", result.stdout)
        self.assertIn("--port", result.stdout)

    def test_kvtwist_help(self) -> None:
        """The kvtwist console script prints its usage."""
        result = run([os.path.join(self.bin, "kvtwist"), "--help"], SHARED.dir(),
                     "kvtwist --help")
        self.assertTrue(result.stdout.startswith("usage: kvtwist"), result.stdout)

    def test_pytest_fixtures_from_the_wheel(self) -> None:
        """
        With pytest and pytest-twisted added, the downstream pytest example
        finds kvtwist's fixtures through the wheel's pytest11 entry point,
        and passes.
        """
        workdir = SHARED.dir()
        python = os.path.join(self.bin, "python")
        run([sys.executable, "-m", "pip", "--python", python, "install", "pytest",
             "pytest-twisted"], workdir, "pip install pytest pytest-twisted")
        project = tempfile.mkdtemp(prefix="downstream-", dir=workdir)
        shutil.copy(os.path.join(HERE, "kit", "test_pytest_example.py"), project)
        with open(os.path.join(project, "pytest.ini"), "w") as f:
            f.write("[pytest]\naddopts = -p no:cacheprovider\n")
        result = subprocess.run(
            [python, "-m", "pytest", "-q"], cwd=project, env=step_env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP_TIMEOUT,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertRegex(output.strip().splitlines()[-1], r"\b%d passed\b" % (example_count(),))
