"""
Packaging: what a user gets from C{python -m build} and C{pip install}.

The working tree (the files git tracks or would track: C{.gitignore}d ones
left out) is copied to a temporary directory and built there with
C{python -m build}, as a user would build a release, so nothing is written
into the source tree. Then: C{twine check} passes on the sdist and the
wheel; the wheel holds the package, its static files and the twistd dropin
(and no C{__init__.py} in C{twisted/} or C{twisted/plugins/}), and declares
the C{kvtwist} console script and the C{pytest11} plugin; installed into a
fresh venv (dependencies from the package index), C{twistd kvcache --help}
and C{kvtwist --help} work, and the downstream pytest example passes there
with the fixtures found through the wheel's entry point.

The slowest module of the suite (about a minute: two isolated builds and
two installs); skipped, with the reason, when C{build} is not installed,
git is not there to list the files, or no package index can be reached.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: Seconds for one build or install step: generous, for a busy machine.
STEP_TIMEOUT = 300

#: What pip or build print when no package index can be reached.
OFFLINE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|"
    r"Failed to establish a new connection|Temporary failure in name resolution|"
    r"Network is unreachable"
)


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
    """Run one step; skip if it failed for want of a package index, fail otherwise."""
    result = subprocess.run(
        args, cwd=cwd, env=step_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=STEP_TIMEOUT,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        if OFFLINE.search(output):
            pytest.skip("%s needs a reachable package index: %s"
                        % (what, OFFLINE.search(output).group(0)))
        pytest.fail("%s failed (exit %d):\n%s" % (what, result.returncode, output[-6000:]))
    return result


def source_files() -> List[str]:
    """The files of the working tree that git tracks or would track."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("git and a git checkout are needed to list the source files")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True, timeout=60,
    ).stdout.decode("utf-8")
    # --cached also names files deleted in the working tree: skip those.
    return [p for p in listing.split("\0") if p and os.path.isfile(os.path.join(REPO, p))]


@pytest.fixture(scope="module")
def workdir():
    path = tempfile.mkdtemp(prefix="kvtwist-packaging-")
    yield path
    shutil.rmtree(path, True)


@pytest.fixture(scope="module")
def dist(workdir: str) -> Dict[str, str]:
    """Build the sdist and the wheel from a copy of the tree: their paths."""
    pytest.importorskip("build", reason="the packaging tests need `build` (pip install build)")
    source = os.path.join(workdir, "src")
    for path in source_files():
        target = os.path.join(source, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, path), target)
    out = os.path.join(workdir, "dist")
    run([sys.executable, "-m", "build", "--outdir", out, source], workdir, "python -m build")
    sdists = glob.glob(os.path.join(out, "kvtwist-*.tar.gz"))
    wheels = glob.glob(os.path.join(out, "kvtwist-*-py3-none-any.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return {"sdist": sdists[0], "wheel": wheels[0]}


@pytest.fixture(scope="module")
def venv(workdir: str, dist: Dict[str, str]) -> str:
    """
    A fresh venv with the wheel installed the ordinary way (dependencies
    from the index); its bin directory. Made without pip of its own and
    filled with this interpreter's pip (C{pip --python}): the same install,
    without ensurepip's half minute.
    """
    path = os.path.join(workdir, "venv")
    run([sys.executable, "-m", "venv", "--without-pip", path], workdir, "python -m venv")
    python = os.path.join(path, "bin", "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", dist["wheel"]],
        workdir, "pip install of the wheel")
    return os.path.join(path, "bin")


def test_twine_check(dist: Dict[str, str], workdir: str) -> None:
    """twine check passes on both the sdist and the wheel (metadata, README rendering)."""
    pytest.importorskip("twine", reason="twine is not installed (pip install twine)")
    result = run([sys.executable, "-m", "twine", "check", "--strict", dist["sdist"],
                  dist["wheel"]], workdir, "twine check")
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_contents(dist: Dict[str, str]) -> None:
    """
    The wheel holds the package and the dropin, the static files, no tests,
    no __init__.py in the twisted namespace, and both entry points.
    """
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode("utf-8")
    for required in ("kvtwist/__init__.py", "kvtwist/testing.py", "kvtwist/pytest_plugin.py",
                     "kvtwist/dumpload.py", "twisted/plugins/kvtwist_kvcache.py"):
        assert required in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    static = os.path.join(REPO, "kvtwist", "web", "static")
    for root, _, files in os.walk(static):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), REPO).replace(os.sep, "/")
            assert relative in names, "static file missing from the wheel: " + relative
    assert re.search(r"^kvtwist = kvtwist\.cli:run$", entry_points, re.M)
    assert re.search(r"^\[pytest11\]\nkvtwist = kvtwist\.pytest_plugin$", entry_points, re.M)


def test_sdist_builds_what_the_wheel_has(dist: Dict[str, str]) -> None:
    """The sdist carries setup.py, the README and the dropin (the wheel was built from it)."""
    import tarfile

    with tarfile.open(dist["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"setup.py", "README.md", "twisted/plugins/kvtwist_kvcache.py",
            "kvtwist/pytest_plugin.py"} <= names


def test_twistd_kvcache_help(venv: str, workdir: str) -> None:
    """In the fresh venv, twistd finds the kvcache plugin and prints its options."""
    result = run([os.path.join(venv, "twistd"), "kvcache", "--help"], workdir,
                 "twistd kvcache --help")
    assert "--data" in result.stdout and "--port" in result.stdout


def test_kvtwist_help(venv: str, workdir: str) -> None:
    """In the fresh venv, the kvtwist console script prints its usage."""
    result = run([os.path.join(venv, "kvtwist"), "--help"], workdir, "kvtwist --help")
    assert result.stdout.startswith("usage: kvtwist")


def test_pytest_fixtures_from_the_wheel(venv: str, workdir: str) -> None:
    """
    With pytest and pytest-twisted added to the fresh venv, the downstream
    pytest example finds kvtwist's fixtures through the wheel's pytest11
    entry point, and passes.
    """
    python = os.path.join(venv, "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", "pytest",
         "pytest-twisted"], workdir, "pip install pytest pytest-twisted")
    project = os.path.join(workdir, "downstream")
    os.makedirs(project)
    shutil.copy(os.path.join(HERE, "kit", "test_pytest_example.py"), project)
    with open(os.path.join(project, "pytest.ini"), "w") as f:
        f.write("[pytest]\naddopts = -p no:cacheprovider\n")
    result = subprocess.run(
        [python, "-m", "pytest", "-q"], cwd=project, env=step_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP_TIMEOUT,
    )
    with open(os.path.join(HERE, "kit", "test_pytest_example.py"), encoding="utf-8") as f:
        expected = len(re.findall(r"^\s*(?:async\s+)?def test_", f.read(), re.M))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"\b%d passed\b" % (expected,), output.strip().splitlines()[-1]), output
