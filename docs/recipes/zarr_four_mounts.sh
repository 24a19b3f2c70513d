#!/usr/bin/env bash
# zarr recipe of docs/SHARDING.md, on one machine: four restricted mounts of one dataset
# (shards 0..3 of 4, as four nodes would have), then
#   1. tests/fixtures/zarr_shards.py check: rank r reads rows r, r+4, ... through mount r; the rows
#      put together must equal the array read from the source (tests/sharding.rs runs the
#      same check in CI). Correct on any mount, but most chunks it opens are other shards'.
#   2. zarr_shard_blocks.py: rank r reads exactly the blocks of its mount's shard, each
#      checked against the source; together the four ranks read every block once, and no
#      mount opens a file outside its shard.
#
#   docs/recipes/zarr_four_mounts.sh [DATASET_DIR]
#
# Without DATASET_DIR a small zarr v2 array is made (DATASET_DIR/array.zarr, 64 x 256
# int32, chunks 4 x 64). Needs python3 with numpy and zarr<3, FUSE. BICACHE: the binary
# (default: bicache on PATH).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BICACHE=${BICACHE:-bicache}
WORK=$(mktemp -d /tmp/bicache-zarr.XXXXXX)
MOUNTS=()
cleanup() {
    local m
    for m in "${MOUNTS[@]}"; do "$BICACHE" unmount "$m" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

SRC=${1:-$WORK/dataset}
if [ ! -d "$SRC/array.zarr" ]; then
    mkdir -p "$SRC"
    python3 "$HERE/../../tests/fixtures/zarr_shards.py" create "$SRC/array.zarr"
fi
for i in 0 1 2 3; do
    mkdir -p "$WORK/mnt$i"
    # Restricted view (the default): each mount lists only its shard's chunk files, plus
    # .zarray/.zattrs/.zgroup, which every shard shows.
    "$BICACHE" mount "$SRC" "$WORK/mnt$i" --cache-dir "$WORK/cache$i" --ram 64MiB --disk 256MiB \
        --shard-index "$i" --shard-count 4 --seed 1
    MOUNTS+=("$WORK/mnt$i")
done
for i in 0 1 2 3; do
    "$BICACHE" warm "$WORK/mnt$i" --quiet
    echo "mount $i: $(ls "$WORK/mnt$i/array.zarr" | wc -l) chunk files listed," \
        "$(wc -l <"$WORK/mnt$i/.bicache/shard.txt") in its shard"
done
python3 "$HERE/../../tests/fixtures/zarr_shards.py" check "$SRC/array.zarr" \
    "$WORK/mnt0/array.zarr" "$WORK/mnt1/array.zarr" "$WORK/mnt2/array.zarr" "$WORK/mnt3/array.zarr"
for i in 0 1 2 3; do
    "$BICACHE" stats "$WORK/mnt$i" | sed -n "s/^shard/mount $i: shard/p"
done
total=0
for i in 0 1 2 3; do
    line=$(python3 "$HERE/zarr_shard_blocks.py" "$WORK/mnt$i" array.zarr --check "$SRC/array.zarr")
    echo "$line"
    case "$line" in *"; 0 out-of-shard opens") ;; *) echo "unexpected out-of-shard opens" >&2; exit 1 ;; esac
    total=$((total + $(echo "$line" | awk '{ print $2 }')))
done
want=$(python3 -c 'import sys, zarr; print(zarr.open(sys.argv[1], mode="r").nchunks)' "$SRC/array.zarr")
[ "$total" -eq "$want" ] || { echo "the shards' blocks add up to $total, the array has $want" >&2; exit 1; }
echo "ok: the four shards' blocks add up to the array's $want chunks, each read once"
