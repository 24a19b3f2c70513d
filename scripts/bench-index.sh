#!/usr/bin/env bash
# How fast does a mount come up on a big SSD tier? Fills a cache dir with N chunks
# (default 100,000, through a real mount with 4 KiB chunks), unmounts, drops the page
# cache, then times `bicache mount` (returns once the mount is live) and reads the
# index-rebuild time from the daemon log. Target: 100,000 chunks ready in under 2 s.
#
#   scripts/bench-index.sh            # CHUNKS=100000 RUNS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNKS=${CHUNKS:-100000}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/tmp/bicache-bench-index}
cargo build --release --quiet
BIN=$PWD/target/release/bicache
mkdir -p "$WORK/src" "$WORK/mnt"
cleanup() { "$BIN" unmount "$WORK/mnt" 2>/dev/null || true; }
trap cleanup EXIT

# 100 files of CHUNKS/100 chunks each.
per_file=$((CHUNKS / 100 * 4096))
for i in $(seq -w 0 99); do
    f=$WORK/src/f$i.bin
    [[ -f $f && $(stat -c %s "$f") == "$per_file" ]] || head -c "$per_file" /dev/urandom >"$f"
done
rm -rf "$WORK/cache"
args=(--cache-dir "$WORK/cache" --chunk-size 4KiB --ram 16MiB --disk 2GiB)
"$BIN" mount "$WORK/src" "$WORK/mnt" "${args[@]}"
cat "$WORK"/mnt/*.bin >/dev/null
"$BIN" unmount "$WORK/mnt"
have=$(find "$WORK/cache/chunks-v2" -type f | wc -l)
echo "cache dir holds $have chunk files"

results=()
for r in $(seq 1 "$RUNS"); do
    sync
    echo 3 >/proc/sys/vm/drop_caches
    : >"$WORK/log"
    start=$(date +%s%N)
    "$BIN" mount "$WORK/src" "$WORK/mnt" "${args[@]}" --log-file "$WORK/log"
    end=$(date +%s%N)
    rebuild=$(grep -o 'elapsed_ms=[0-9]*' "$WORK/log" | head -1 | cut -d= -f2)
    chunks=$(grep -o ' chunks=[0-9]*' "$WORK/log" | head -1 | cut -d= -f2)
    "$BIN" unmount "$WORK/mnt"
    ms=$(((end - start) / 1000000))
    echo "run $r: mount ready in $ms ms (index rebuild ${rebuild} ms, $chunks chunks)"
    results+=("$ms $rebuild")
done
printf '%s\n' "${results[@]}" | sort -n | awk -v n="$RUNS" 'NR == int((n + 1) / 2) {
    printf "median: mount ready in %d ms, index rebuild %d ms (page cache dropped before each)\n", $1, $2 }'
