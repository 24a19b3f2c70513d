#!/usr/bin/env bash
# A/B of FUSE passthrough on the warm small-file epoch (docs/TUNING.md).
#
# bicache is mounted straight over the suite's local ImageNet-like tree (made by
# scripts/bench.sh in $BENCH_DIR), so only the cache's hit path is measured. Per mode: fill
# the SSD tier, remount (empty RAM tier), one epoch to warm, then per run one timed epoch
# right after dropping the page cache. native = the same epoch on the tree itself.
#
#   sudo scripts/bench-passthrough.sh                # RAM=256MiB, 3 runs
#   sudo RAM=2GiB RUNS=5 scripts/bench-passthrough.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
RAM=${RAM:-256MiB}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/bicache-bench2}
DATA=$BENCH_DIR/data/imagenet
LISTING=$BENCH_DIR/imagenet.tsv
[ -d "$DATA" ] && [ -f "$LISTING" ] || {
    die "no dataset in $BENCH_DIR (run scripts/bench.sh once to generate it)"
}
cargo build --release --quiet
BIN=$PWD/target/release/bicache
WORK=$(mktemp -d /tmp/bicache-pt.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
cleanup() {
    "$BIN" unmount "$MNT" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mount_mode() {
    "$BIN" mount "$DATA" "$MNT" --cache-dir "$WORK/cache-$1" --ram "$RAM" --disk 8GiB \
        --immutable --passthrough "$1"
}
epoch() { python3 scripts/bench_work.py epoch "$1" "$LISTING" "$2" | json_field seconds; }

for mode in on off; do
    mount_mode "$mode"
    epoch "$MNT" 1 >/dev/null
    sleep 5 # let the SSD write-back drain before the clean unmount
    "$BIN" unmount "$MNT"
done
declare -A secs
for run in $(seq "$RUNS"); do
    for mode in native on off; do
        root=$DATA
        if [ "$mode" != native ]; then
            mount_mode "$mode"
            epoch "$MNT" 7 >/dev/null
            root=$MNT
        fi
        drop_caches
        t=$(epoch "$root" $((run + 10)))
        secs[$mode]+="$t "
        echo "run $run $mode: $t s"
        if [ "$mode" != native ]; then
            grep -o '"passthrough":{[^}]*}' "$MNT/.bicache/stats.json"
            "$BIN" unmount "$MNT"
        fi
    done
done
n=$(median <<<"${secs[native]}")
on=$(median <<<"${secs[on]}")
off=$(median <<<"${secs[off]}")
echo "--ram $RAM, medians of $RUNS: native $n s, passthrough on $on s, off $off s;" \
    "on is $(awk -v a="$off" -v b="$on" 'BEGIN {printf "%.2f", a / b}')x the speed of off"
