#!/usr/bin/env bash
# Create .venv (if missing) and install hyperpelt with its pinned dependencies (the extras the test suite
# runs: test, vl, serve and ray), once.
# Idempotent: a stamp named after the hash of pyproject.toml and this script skips the install when nothing
# changed.
# torch is installed FIRST and pinned, so nothing ever pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
TORCH_PIN="torch==2.13.0"

find_python() {
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "setup: need Python >= 3.10 (set PYTHON=/path/to/python3)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY=$(find_python)
    echo "setup: creating $VENV with $PY" >&2
    "$PY" -m venv "$VENV"
fi

HASH=$(cat pyproject.toml scripts/setup.sh | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
STAMP="$VENV/.installed-$HASH"
if [ -f "$STAMP" ]; then
    exit 0
fi

echo "setup: installing hyperpelt and its pinned dependencies into $VENV (first run only)" >&2
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "$TORCH_PIN" "setuptools>=64"
"${PIP[@]}" install --no-build-isolation -e ".[test,vl,serve,ray]"
# METEOR and SPICE (the caption metrics) run Java: a headless runtime is installed where it is missing and
# apt-get can (as root); otherwise the metrics say in one line that they cannot run.
if ! command -v java >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing a Java runtime for the caption metrics (METEOR, SPICE)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; } \
            >/dev/null 2>&1 || echo "setup: could not install Java; METEOR and SPICE will not run" >&2
    else
        echo "setup: java is not on PATH; METEOR and SPICE will not run (install a Java runtime)" >&2
    fi
fi
rm -f "$VENV"/.installed-*
touch "$STAMP"
