#!/usr/bin/env bash
# A whole random pass over one large file, cold: every block read exactly once in random
# order (fio randread without time_based). The suite's cold random passes (8 s each) see
# only the start of such a pass, where each miss fetches a whole chunk; this shows the
# whole pass: time, and bytes pulled from the source per byte read (docs/BENCHMARKS.md).
#
# Systems: the slow source read directly (slowfs, 1 ms per request, 200 MB/s) and bicache
# over it with a fresh cache dir. Data: the first of the suite's big files
# ($BENCH_DIR/data/big, made by scripts/bench.sh).
#
#   sudo scripts/bench-randpass.sh            # bs 128k over 512 MiB, bs 4k over 64 MiB, 3 runs
#   sudo RUNS=1 scripts/bench-randpass.sh
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG_TAG=bench-randpass
. "$REPO/scripts/lib.sh"
cd "$REPO"
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/bicache-bench2}
BIG=$BENCH_DIR/data/big
[ -d "$BIG" ] || die "no dataset in $BENCH_DIR (run scripts/bench.sh once to generate it)"
FILE=$(cd "$BIG" && ls | head -1)
cargo build --release --quiet --bin bicache --example slowfs
BIN=$REPO/target/release
WORK=$(mktemp -d /tmp/bicache-randpass.XXXXXX)
SLOW=$WORK/slow
MNT=$WORK/mnt
mkdir -p "$SLOW" "$MNT"
SLOWFS_PID=
cleanup() {
    "$BIN/bicache" unmount "$MNT" >/dev/null 2>&1 || true
    [ -n "$SLOWFS_PID" ] && kill -TERM "$SLOWFS_PID" 2>/dev/null && wait "$SLOWFS_PID" || true
    is_mounted "$SLOW" && umount -l "$SLOW"
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/examples/slowfs" "$BIG" "$SLOW" --latency-ms 1 --bandwidth-mbps 200 \
    --stats-file "$WORK/slowfs.json" 2>"$WORK/slowfs.log" &
SLOWFS_PID=$!
wait_mounted "$SLOW" || die "slowfs did not mount"

pulled() { sleep 1.2; json_field bytes <"$WORK/slowfs.json"; } # stats file: every 0.5 s

# pass SYSTEM_ROOT BS SIZE: prints "seconds bytes_read bytes_pulled"
pass() {
    local before after
    before=$(pulled)
    drop_caches
    fio --name=pass --filename="$1/$FILE" --rw=randread --bs="$2" --size="$3" \
        --ioengine=psync --readonly --randseed=7 --output-format=json >"$WORK/fio.json"
    after=$(pulled)
    python3 scripts/bench_work.py fio "$WORK/fio.json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("%.2f %d %d" % (d["seconds"], d["bytes"], int(sys.argv[2]) - int(sys.argv[1])))' "$before" "$after"
}

declare -A results
for run in $(seq "$RUNS"); do
    for shape in "128k 512m" "4k 64m"; do
        set -- $shape
        bs=$1 size=$2
        for sys in slowfs bicache; do
            root=$SLOW
            if [ "$sys" = bicache ]; then
                rm -rf "$WORK/cache"
                "$BIN/bicache" mount "$SLOW" "$MNT" --cache-dir "$WORK/cache" --ram 2GiB --disk 4GiB
                root=$MNT
            fi
            r=$(pass "$root" "$bs" "$size")
            [ "$sys" = bicache ] && "$BIN/bicache" unmount "$MNT"
            log "run $run, bs $bs over $size, $sys: seconds bytes_read bytes_pulled = $r"
            results["$bs $size $sys"]+="$r;"
        done
    done
done

echo
echo "Medians of $RUNS run(s), $FILE, cold, 1 job; source = slowfs at 1 ms per request, 200 MB/s:"
echo
echo "| pass | system | seconds | MB/s | pulled / read | speed vs the source |"
echo "|---|---|---|---|---|---|"
for shape in "128k 512m" "4k 64m"; do
    python3 - "$shape" "${results["$shape slowfs"]}" "${results["$shape bicache"]}" <<'PY'
import statistics, sys
shape = sys.argv[1]
rows = {}
for name, raw in (("slowfs (source)", sys.argv[2]), ("bicache", sys.argv[3])):
    runs = [tuple(float(x) for x in r.split()) for r in raw.split(";") if r]
    secs = statistics.median(r[0] for r in runs)
    read = statistics.median(r[1] for r in runs)
    pulled = statistics.median(r[2] for r in runs)
    rows[name] = (secs, read, pulled)
base = rows["slowfs (source)"][0]
bs, size = shape.split()
for name, (secs, read, pulled) in rows.items():
    print(f"| random {bs} over {size.replace('m', ' MiB')} | {name} | {secs:.1f} | "
          f"{read / secs / 1e6:.1f} | {pulled / read:.3f} | {base / secs:.2f}x |")
PY
done
