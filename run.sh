#!/usr/bin/env bash
# The project's two commands:
#   ./run.sh [twistd kvcache options]   set up .venv and serve on 127.0.0.1:8080
#   ./run.sh test [pytest args]         set up .venv with test tools and run the suite
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
if [ "${1:-}" = test ]; then mode=test; shift; fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"

# Reinstall only when the packaging changed. Installed in compat editable
# mode: a default editable install hides twisted/plugins from twistd.
extras=""
[ "$mode" = test ] && extras="[test]"
stamp="$VENV/.kvtwist-installed$extras-$(cat setup.py | "$py" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
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

if [ "$mode" = test ]; then
    exec "$py" -b -m pytest "$@"
fi
exec "$VENV/bin/twistd" -n --pidfile= kvcache "$@"
