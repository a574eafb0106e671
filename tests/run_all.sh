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

# NVRTC from the venv, so that the tests compile every CUDA kernel the GPU executor generates
# (with SWITCHYARD_REQUIRE_NVRTC set, that test fails rather than skips if it cannot).
NVRTC_DIR=$(echo "$PWD/$VENV"/lib/python3*/site-packages/nvidia/cu13/lib)
[ -e "$NVRTC_DIR/libnvrtc.so.13" ] || { echo "libnvrtc.so.13 missing under $NVRTC_DIR" >&2; exit 1; }
export LD_LIBRARY_PATH="$NVRTC_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SWITCHYARD_REQUIRE_NVRTC=1

# One debug build serves both suites.
cargo build --all-targets
cargo test

SWITCHYARD_BIN="$PWD/target/debug/switchyard" "$VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider
