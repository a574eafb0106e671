#!/usr/bin/env bash
# Runs every test: the Rust unit and integration tests (the real server on port 0), then the
# tritonclient suite against the real daemon binary. Needs only the Rust toolchain and python3;
# the Python packages are installed from the registry into .venv-test/ on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-test
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# One debug build serves both suites.
cargo build --all-targets
cargo test

SWITCHYARD_BIN="$PWD/target/debug/switchyard" "$VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider
