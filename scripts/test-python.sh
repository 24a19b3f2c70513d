#!/usr/bin/env bash
# The Python package's tests, against the wheel as a user gets it:
#   1. builds the wheel from this checkout with pip (maturin is the PEP 517 backend, fetched
#      from PyPI into pip's isolated build environment; cargo builds the binary, into
#      $CARGO_TARGET_DIR if set, else ./target);
#   2. checks that the wheel holds the binary and the package, installs it into a fresh
#      venv, with pytest, pytest-timeout, prometheus_client (the metrics tests parse with it),
#      pyarrow, h5py and zarr (the format tests read with them) from PyPI;
#   3. runs tests/python with that venv's pytest from outside the checkout
#      (--import-mode=importlib: the installed package is tested, never ./python).
# Needs cargo, python3 (>= 3.8, with venv) and FUSE (/dev/fuse, fusermount3): the tests
# mount for real. Exits non-zero when anything fails.
# Usage: bash scripts/test-python.sh [pytest args...]   (e.g. -k plan, -x, -v)
#   PYTHON=python3.12 bash scripts/test-python.sh    # another interpreter
#   KEEP=1 ...                                        # keep the work dir
set -euo pipefail

start=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}

# rustup installs put cargo in ~/.cargo/bin, which a bare environment may lack.
if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "${HOME:-/root}/.cargo/env"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bicache-pytest.XXXXXX")
cleanup() {
    local rc=$?
    # Nothing may stay mounted under the work dir (the tests fail if one does; this is
    # the last resort), and nothing is removed while something is.
    local left
    left=$(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo 2>/dev/null | sort -r || true)
    for m in $left; do
        echo "test-python.sh: unmounting leftover $m" >&2
        fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "test-python.sh: work dir kept: $WORK" >&2
    elif ! awk -v w="$WORK/" 'index($5, w) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        rm -rf "$WORK"
    fi
    echo "test-python.sh: $(( $(date +%s) - start )) s, exit $rc" >&2
    exit "$rc"
}
trap cleanup EXIT

echo "== venv ($("$PYTHON" --version 2>&1)) in $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
PIP=("$VPY" -m pip --disable-pip-version-check)
# The format tests read through the mount with the readers users train from (pyarrow,
# h5py, zarr), not with hand-written parsers.
"${PIP[@]}" install --quiet pytest pytest-timeout prometheus_client pyarrow h5py numpy "zarr>=2.18,<3"

# `pip install .` builds for this machine only (maturin's PEP 517 default: a plain linux
# tag, no audit). Here the same PEP 517 build is asked for the manylinux policy a wheel for
# others gets (the oldest that a binary linked on glibc >= 2.34 can meet), so a binary
# that stops being manylinux-compliant fails this script.
export MATURIN_PEP517_ARGS=${MATURIN_PEP517_ARGS:---compatibility manylinux_2_34}
echo "== wheel (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}, MATURIN_PEP517_ARGS=$MATURIN_PEP517_ARGS)"
"${PIP[@]}" wheel --no-deps --wheel-dir "$WORK/wheel" "$REPO"
shopt -s nullglob
wheels=("$WORK"/wheel/bicache-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || { echo "test-python.sh: expected one bicache wheel, got: ${wheels[*]:-none}" >&2; exit 1; }
echo "   ${wheels[0]##*/}"
"$VPY" - "${wheels[0]}" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
want = ["bicache/__init__.py", "bicache/_api.py", "bicache/_cli.py", "bicache/torch.py",
        "bicache/py.typed"]
missing = [n for n in want if n not in names]
if not any(n.endswith(".data/scripts/bicache") for n in names):
    missing.append("<name>.data/scripts/bicache (the binary)")
stray = [n for n in names if n.startswith(("tests/", "src/", "target/"))]
if missing or stray:
    sys.exit(f"wheel contents wrong: missing {missing}, stray {stray}")
if "manylinux" not in sys.argv[1]:
    sys.exit(f"not a manylinux wheel: {sys.argv[1]}")
EOF

echo "== install"
"${PIP[@]}" install --quiet --no-deps --no-index "${wheels[0]}"
"$WORK/venv/bin/bicache" --version
# On PATH once the venv is active, like any console script.
PATH="$WORK/venv/bin:$PATH" command -v bicache | grep -qx "$WORK/venv/bin/bicache"

echo "== pytest"
cd "$WORK"
# tests/python/pytest.ini adds --import-mode=importlib; a hung mount fails its test
# (pytest-timeout) instead of the run.
PYTHONDONTWRITEBYTECODE=1 "$WORK/venv/bin/pytest" \
    -c "$REPO/tests/python/pytest.ini" --rootdir "$REPO/tests/python" \
    --basetemp "$WORK/pytest" --timeout 120 "$@" "$REPO/tests/python"
