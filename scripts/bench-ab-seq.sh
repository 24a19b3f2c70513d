#!/usr/bin/env bash
# A/B of two bicache binaries on warm sequential 1 MiB reads (fio, 4 jobs one file each,
# then 1 job through all files), mounted straight over the suite's local big files, so
# only the hit path is measured. Both mounts are filled with one `cat`, left to drain
# their SSD write-back, then read alternately, each pass right after dropping the page
# cache. Used for the buffer-pool and readahead changes in docs/TUNING.md.
#
#   sudo scripts/bench-ab-seq.sh OLD_BINARY NEW_BINARY      # 3 reps each
#   sudo REPS=5 RAM=3GiB scripts/bench-ab-seq.sh A B
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG_TAG=bench-ab-seq
. "$REPO/scripts/lib.sh"
[ $# -eq 2 ] || die "usage: $0 BICACHE_A BICACHE_B"
A=$(realpath "$1")
B=$(realpath "$2")
REPS=${REPS:-3}
RAM=${RAM:-2GiB}
BENCH_DIR=${BENCH_DIR:-/tmp/bicache-bench2}
DATA=$BENCH_DIR/data/big
[ -d "$DATA" ] || die "no dataset in $BENCH_DIR (run scripts/bench.sh once to generate it)"
mapfile -t FILES < <(cd "$DATA" && ls)
WORK=$(mktemp -d /tmp/bicache-abseq.XXXXXX)
cleanup() {
    "$A" unmount "$WORK/mnt-a" >/dev/null 2>&1 || true
    "$B" unmount "$WORK/mnt-b" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for x in a b; do
    bin=$A
    [ "$x" = b ] && bin=$B
    mkdir -p "$WORK/mnt-$x"
    "$bin" mount "$DATA" "$WORK/mnt-$x" --cache-dir "$WORK/cache-$x" --ram "$RAM" --disk 8GiB
    cat "$WORK/mnt-$x"/* >/dev/null
done
sleep 8 # the SSD write-back of both mounts drains

mbps() { python3 -c 'import json, sys
d = json.load(sys.stdin)
b = sum(j["read"]["io_bytes"] for j in d["jobs"])
t = max(j["read"]["runtime"] for j in d["jobs"])
print(round(b / t / 1e3))'; }
seq4() {
    local args=() f
    for f in "${FILES[@]}"; do args+=(--name="$f" --filename="$f"); done
    (cd "$1" && fio --rw=read --bs=1M --ioengine=psync --readonly --output-format=json \
        "${args[@]}") | mbps
}
seq1() {
    (cd "$1" && fio --name=seq1 --rw=read --bs=1M --ioengine=psync --readonly \
        --filename="$(IFS=:; echo "${FILES[*]}")" --file_service_type=sequential \
        --output-format=json) | mbps
}

declare -A r
for rep in $(seq "$REPS"); do
    for x in a b; do
        drop_caches
        s4=$(seq4 "$WORK/mnt-$x")
        drop_caches
        s1=$(seq1 "$WORK/mnt-$x")
        log "rep $rep $x: 4 jobs $s4 MB/s, 1 job $s1 MB/s"
        r[$x-4]+="$s4 "
        r[$x-1]+="$s1 "
    done
done
for j in 4 1; do
    ma=$(median <<<"${r[a-$j]}")
    mb=$(median <<<"${r[b-$j]}")
    echo "warm sequential 1 MiB, $j job(s), --ram $RAM, medians of $REPS: A $ma MB/s, B $mb MB/s," \
        "B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.2f", b / a}')"
done
