#!/usr/bin/env bash
# The project's two commands:
#   ./run.sh [twistd kvcache options]   set up .venv and serve on 127.0.0.1:8080
#   ./run.sh test [pytest args]         set up .venv with test tools, type-check kvtwist/
#                                       with mypy, then run the suite (in parallel: -n 0
#                                       runs it serially, see docs/testing.md)
#   ./run.sh bench [benchmark args]     set up .venv with benchmark tools and run benchmarks/
# PYTHON=/path/to/python3.13 ./run.sh test  uses that interpreter (and its own venv).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "run.sh: kvtwist needs Python 3.10 or newer; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 2
fi
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The default interpreter uses .venv; another one gets its own venv.
if [ -z "${VENV:-}" ]; then
    if [ "$PYTHON" = python3 ]; then VENV=.venv; else VENV=.venv-$pyver; fi
fi

mode=serve
case "${1:-}" in
    test|bench) mode=$1; shift ;;
esac

# need_deb COMMAND PACKAGE: install a Debian package when its command is
# missing and we can (root with apt-get); otherwise say what will be skipped.
need_deb() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing Debian package $2 (for $1)" >&2
        if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >/tmp/kvtwist-apt-$2.log 2>&1; then
            return 0
        fi
        echo "run.sh: could not install $2 (see /tmp/kvtwist-apt-$2.log)" >&2
    else
        echo "run.sh: $1 is missing and cannot be installed here" >&2
    fi
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"

# Reinstall only when the packaging changed. Installed in compat editable
# mode: a default editable install hides twisted/plugins from twistd.
extras=""
[ "$mode" = test ] && extras="[test]"
[ "$mode" = bench ] && extras="[test,bench]"
# The packaging is pyproject.toml (the metadata) and setup.py (the shim).
stamp="$VENV/.kvtwist-installed$extras-$(cat pyproject.toml setup.py | "$py" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
if [ ! -e "$stamp" ]; then
    log="$VENV/install.log"
    if ! { "$py" -m pip install --upgrade pip &&
           "$py" -m pip install -e ".$extras" --config-settings editable_mode=compat; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "run.sh: installing kvtwist into $VENV failed (log above)" >&2
        exit 1
    fi
    touch "$stamp"
fi
# Regenerate the dropin cache now, so twistd never writes it at run time.
"$py" -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
# Byte-compile kvtwist now (a file that does not compile is left to fail
# where it is used): the tests start twistd some 160 times, and with
# PYTHONDONTWRITEBYTECODE set each start would compile kvtwist again (about
# a tenth of a second of CPU each time).
"$py" -m compileall -q kvtwist >/dev/null 2>&1 || true

if [ "$mode" = test ]; then
    need_deb etcd etcd-server || echo "run.sh: etcd tests will be skipped" >&2
    # The admin page is tested in a real headless Chromium.
    { need_deb chromium chromium && need_deb chromedriver chromium-driver; } \
        || echo "run.sh: browser tests will be skipped" >&2
    # Type-check kvtwist/ first ([tool.mypy] in pyproject.toml): any error
    # stops the run before the suite starts. The incremental cache lives in
    # the venv, so an unchanged tree checks in a second or two.
    # KVTWIST_MYPY=0 skips the check, to rerun one test while a change is
    # still half-typed; CI never sets it.
    if [ "${KVTWIST_MYPY:-1}" != 0 ]; then
        if ! "$py" -m mypy --config-file pyproject.toml --cache-dir "$VENV/.mypy_cache"; then
            echo "run.sh: mypy found type errors in kvtwist/ (listed above); the tests did not run" >&2
            exit 1
        fi
    fi
    # Two pytest-xdist workers by default ($KVTWIST_TEST_WORKERS, or -n N
    # among the pytest args, which wins; -n 0 is a serial run). Whole
    # classes, in the collected order: tests/conftest.py says why.
    exec "$py" -b -m pytest -n "${KVTWIST_TEST_WORKERS:-2}" \
        --dist loadscope --no-loadscope-reorder "$@"
fi
if [ "$mode" = bench ]; then
    need_deb wrk wrk || { echo "run.sh: the benchmark needs wrk" >&2; exit 1; }
    exec "$py" -m benchmarks "$@"
fi
exec "$VENV/bin/twistd" -n --pidfile= kvcache "$@"
