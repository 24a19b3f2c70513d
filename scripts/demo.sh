#!/usr/bin/env bash
# Builds bicache, makes a small dataset, mounts it, reads it twice (page cache dropped in
# between when run as root) and prints the stats. Everything is unmounted on exit.
# Usage: bash scripts/demo.sh [DATASET_DIR]   (without an argument a demo tree is made)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/bicache
WORK=$(mktemp -d /tmp/bicache-demo.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
cleanup() {
    "$BIN" unmount "$MNT" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

SRC=${1:-}
if [[ -z "$SRC" ]]; then
    SRC=$WORK/dataset
    echo "making a demo dataset in $SRC (200 files, 3 classes)"
    for class in cat dog bird; do
        mkdir -p "$SRC/train/$class"
        for i in $(seq 1 67); do
            head -c $((16384 + (i * 4099) % 200000)) /dev/urandom >"$SRC/train/$class/img_$i.jpg"
        done
    done
fi

"$BIN" mount "$SRC" "$MNT" --cache-dir "$WORK/cache" --ram 256MiB --disk 1GiB
echo "mounted $SRC at $MNT"
drop() { if [[ $(id -u) == 0 ]]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }

for pass in first second; do
    drop
    start=$(date +%s.%N)
    bytes=$(find "$MNT" -type f -exec cat {} + | wc -c)
    end=$(date +%s.%N)
    awk -v p="$pass" -v b="$bytes" -v s="$start" -v e="$end" 'BEGIN { printf "%s pass: %d bytes in %.3f s\n", p, b, e - s }'
    "$BIN" stats "$MNT" | sed 's/^/    /'
done
