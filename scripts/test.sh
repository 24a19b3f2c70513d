#!/usr/bin/env bash
# The whole test suite, what CI runs (bash .ci/run): the Rust tests (unit, and integration
# tests that mount real FUSE filesystems), then the Python package's tests against the
# wheel installed in a fresh venv (scripts/test-python.sh). Needs /dev/fuse (run as root,
# or as a user allowed to mount FUSE). Arguments go to `cargo test` (e.g. a test name).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "${HOME:-/root}/.cargo/env"
fi
start=$(date +%s)
cargo test --release "$@"
rust=$(( $(date +%s) - start ))
bash scripts/test-python.sh
echo "scripts/test.sh: all tests passed (Rust ${rust} s, total $(( $(date +%s) - start )) s)"
