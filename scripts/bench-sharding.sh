#!/usr/bin/env bash
# Sharding benchmark: hit rate per epoch under random per-epoch order, for a dataset twice
# the cache, of plain LRU, first-come pinning (unsharded) and a 2-way sharded pair of mounts.
#
# A reproducible dataset (2,000 files of 64-192 KiB, ~250 MiB) is served by slowfs (a
# simulated slow shared filesystem that counts the bytes it serves). Every mount gets
# `--ram 8MiB --disk X` with X = half the dataset's bytes. Systems, each on fresh cache dirs:
#   lru      one unsharded mount, --cache-policy lru
#   pin      one unsharded mount, --cache-policy pin (the default)
#   sharded  two mounts, --shard node --shard-index i --shard-count 2 (i = 0, 1), each with
#            the same budget, `bicache warm` on both, then each read by its own readers
#            (the files of MP/.bicache/shard.txt), both mounts at once, like two nodes
# Each of EPOCHS epochs drops the page cache, then WORKERS reader processes per mount read
# every file of their view whole in a new seeded random order, checking size and CRC-32.
# Per epoch: chunk-lookup hit rate (ram.hits + disk.hits) / (ram.hits + ram.misses) and byte
# hit rate 1 - source bytes / bytes read, from `bicache stats --json` deltas. The report
# (epoch 1, median of epochs 2.., medians over RUNS runs) replaces the generated block of
# the Benchmark section of docs/SHARDING.md.
#
# Needs root (drop_caches, FUSE mounts), /dev/fuse, python3. Usage (from anywhere):
#   scripts/bench-sharding.sh                 # RUNS=3
#   RUNS=1 WRITE_DOC=0 scripts/bench-sharding.sh
# Knobs (environment): RUNS, EPOCHS, WORKERS, SEED, NFILES, MIN_KIB, MAX_KIB, DIRS, RAM,
#   DISK (default: half the dataset's bytes), LATENCY_MS, BANDWIDTH_MBPS, SYSTEMS (subset of
#   "lru pin sharded"), BENCH_DIR (default /tmp/bicache-bench-sharding; must be empty or made
#   by this script), WRITE_DOC (1/0), SKIP_BUILD (1/0), BICACHE_BIN (a prebuilt binary).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG_TAG=bench-sharding
. "$REPO/scripts/lib.sh"
UTIL=$REPO/scripts/bench_sharding_util.py
COMMAND_LINE=
for v in RUNS EPOCHS WORKERS SEED NFILES MIN_KIB MAX_KIB DIRS RAM DISK LATENCY_MS \
    BANDWIDTH_MBPS SYSTEMS BENCH_DIR BICACHE_BIN; do
    if [ -n "${!v+set}" ]; then COMMAND_LINE+="$v=$(printf %q "${!v}") "; fi
done
COMMAND_LINE+="scripts/bench-sharding.sh"

RUNS=${RUNS:-3}
EPOCHS=${EPOCHS:-4}
WORKERS=${WORKERS:-4}
SEED=${SEED:-4242}
NFILES=${NFILES:-2000}
MIN_KIB=${MIN_KIB:-64}
MAX_KIB=${MAX_KIB:-192}
DIRS=${DIRS:-20}
RAM=${RAM:-8MiB}
DISK=${DISK:-}
LATENCY_MS=${LATENCY_MS:-1}
BANDWIDTH_MBPS=${BANDWIDTH_MBPS:-200}
SYSTEMS=${SYSTEMS:-lru pin sharded}
BENCH_DIR=${BENCH_DIR:-/tmp/bicache-bench-sharding}
WRITE_DOC=${WRITE_DOC:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
BICACHE_BIN=${BICACHE_BIN:-}
DOC=${DOC:-$REPO/docs/SHARDING.md}
PIN_SHARE=0.95 # src/cache/mod.rs PIN_SHARE: the share of a tier pinned chunks may take


# ------------------------------------------------------------------ mounts and cleanup
MOUNTS=()       # bicache mountpoints we mounted
DAEMONS=()      # their daemons' pids
READER_PIDS=()  # reader processes running now
SLOWFS_PID=



stats_of() { "$BIN/bicache" stats "$1" --json; }


unmount_all() {
    local mp pid i
    for mp in "${MOUNTS[@]}"; do
        if is_mounted "$mp"; then
            "$BIN/bicache" unmount "$mp" >/dev/null 2>&1 || umount -l "$mp" || true
        fi
    done
    # `bicache unmount` waits for the daemon; make sure of it (the pids are ours).
    for pid in "${DAEMONS[@]}"; do
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "bicache daemon $pid still alive after unmount; sending SIGTERM"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    MOUNTS=()
    DAEMONS=()
}

stop_readers() {
    local pid
    for pid in "${READER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    READER_PIDS=()
}

stop_slowfs() {
    if [ -n "$SLOWFS_PID" ]; then
        kill -TERM "$SLOWFS_PID" 2>/dev/null || true
        wait "$SLOWFS_PID" 2>/dev/null || true
        SLOWFS_PID=
    fi
    if [ -n "${SLOW_MNT:-}" ] && is_mounted "$SLOW_MNT"; then umount -l "$SLOW_MNT" || true; fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_readers
    unmount_all
    stop_slowfs
    [ "$rc" -eq 0 ] || log "failed (exit $rc); everything unmounted.$([ -d "${OUT:-}" ] && echo " Logs: $OUT")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------ checks
[ "$(id -u)" -eq 0 ] || die "must run as root (drop_caches, FUSE mounts)"
[ -e /dev/fuse ] || die "/dev/fuse missing"
command -v python3 >/dev/null || die "python3 missing"
case "$BENCH_DIR" in *[[:space:]]*) die "BENCH_DIR must not contain spaces" ;; esac
[ "$RUNS" -ge 1 ] 2>/dev/null || die "RUNS must be >= 1"
[ "$EPOCHS" -ge 2 ] 2>/dev/null || die "EPOCHS must be >= 2"
for s in $SYSTEMS; do
    case "$s" in lru | pin | sharded) ;; *) die "unknown system '$s' in SYSTEMS" ;; esac
done
MARKER=.bicache-bench-sharding
if [ -d "$BENCH_DIR" ] && [ ! -e "$BENCH_DIR/$MARKER" ] && [ -n "$(ls -A "$BENCH_DIR")" ]; then
    die "BENCH_DIR=$BENCH_DIR is not empty and was not made by this script"
fi
mkdir -p "$BENCH_DIR"
touch "$BENCH_DIR/$MARKER"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)
BIN=$BENCH_DIR/bin
DATA=$BENCH_DIR/data
SLOW_MNT=$BENCH_DIR/slow
OUT=$BENCH_DIR/results
FILES_TSV=$BENCH_DIR/files.tsv
mkdir -p "$BIN" "$SLOW_MNT" "$BENCH_DIR/mnt-a" "$BENCH_DIR/mnt-0" "$BENCH_DIR/mnt-1"
# Leftovers of an interrupted earlier run (only our own mount points).
for mp in "$BENCH_DIR/mnt-a" "$BENCH_DIR/mnt-0" "$BENCH_DIR/mnt-1" "$SLOW_MNT"; do
    if is_mounted "$mp"; then umount -l "$mp"; fi
done
rm -rf "$OUT"
mkdir -p "$OUT"

# ------------------------------------------------------------------------------- build
# Copied aside, so a rebuild of the working tree during the run cannot change them.
if [ "$SKIP_BUILD" != 1 ]; then
    if [ -n "$BICACHE_BIN" ]; then
        (cd "$REPO" && cargo build --release --example slowfs) >&2
    else
        (cd "$REPO" && cargo build --release --bin bicache --example slowfs) >&2
    fi
fi
install -m 0755 "${BICACHE_BIN:-$REPO/target/release/bicache}" "$BIN/bicache"
install -m 0755 "$REPO/target/release/examples/slowfs" "$BIN/slowfs"
if [ -n "$BICACHE_BIN" ]; then
    GIT_REV="prebuilt binary $BICACHE_BIN"
else
    GIT_REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(cd "$REPO" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        GIT_REV="$GIT_REV + uncommitted changes in src/"
    fi
fi

# ----------------------------------------------------------------------------- dataset
STAMP="seed=$SEED files=$NFILES kib=$MIN_KIB-$MAX_KIB dirs=$DIRS v1"
if [ "$(cat "$BENCH_DIR/data.stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "generating the dataset ($STAMP)"
    rm -rf "$DATA" "$BENCH_DIR/data.stamp"
    python3 "$UTIL" gen "$DATA" --files "$NFILES" --min-kib "$MIN_KIB" --max-kib "$MAX_KIB" \
        --dirs "$DIRS" --seed "$SEED"
    python3 "$UTIL" list "$DATA" >"$FILES_TSV"
    echo "$STAMP" >"$BENCH_DIR/data.stamp"
fi
TOTAL_BYTES=$(awk -F'\t' '{ s += $2 } END { printf "%d", s }' "$FILES_TSV")
COUNT=$(wc -l <"$FILES_TSV")
DISK_BYTES=${DISK:-$((TOTAL_BYTES / 2))}
[[ "$DISK_BYTES" =~ ^[0-9]+$ ]] || die "DISK must be a number of bytes"
log "dataset: $COUNT files, $TOTAL_BYTES bytes; cache per mount: --ram $RAM --disk $DISK_BYTES"

# ---------------------------------------------------------------------------- helpers
start_slowfs() {
    rm -f "$OUT/slowfs.json"
    "$BIN/slowfs" "$DATA" "$SLOW_MNT" --latency-ms "$LATENCY_MS" \
        --bandwidth-mbps "$BANDWIDTH_MBPS" --stats-file "$OUT/slowfs.json" \
        2>>"$OUT/slowfs.log" &
    SLOWFS_PID=$!
    wait_mounted "$SLOW_MNT" || die "slowfs did not mount (see $OUT/slowfs.log)"
    ls "$SLOW_MNT" >/dev/null
}

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }

# slowfs rewrites its stats file every 0.5 s: wait for a fresh copy.
slowfs_snapshot() {
    sleep 1.1
    cp "$OUT/slowfs.json" "$1"
}

# mount_bicache MOUNTPOINT CACHE_DIR LOG [options...]
mount_bicache() {
    local mp=$1 cache=$2 logf=$3
    shift 3
    rm -rf "$cache"
    "$BIN/bicache" mount "$SLOW_MNT" "$mp" --cache-dir "$cache" --ram "$RAM" \
        --disk "$DISK_BYTES" --log-file "$logf" "$@"
    is_mounted "$mp" || die "bicache mount returned but $mp is not mounted"
    MOUNTS+=("$mp")
    DAEMONS+=("$(stats_of "$mp" | json_field pid)")
}

# Waits until a mount's SSD write-back has drained (its write counters stop moving), so
# each epoch starts from a settled cache. Gives up after 30 s.
wait_writeback() {
    local prev= cur i
    for i in $(seq 1 120); do
        cur=$(stats_of "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin)["disk"]
print(d["writes"] + d.get("write_errors", 0) + d.get("writes_dropped", 0))')
        [ "$cur" = "$prev" ] && return 0
        prev=$cur
        sleep 0.25
    done
    log "write-back of $1 still moving after 30 s"
}

# run_system NAME: mounts, (warms,) runs the epochs, unmounts. Leaves
# $OUT/runR/NAME/epochE.json and mountK.json.
run_system() {
    local name=$1 dir=$OUT/run$RUN/$1 e k mp t0 t1 seed
    local mps=() args=() lists=()
    mkdir -p "$dir"
    case "$name" in
    lru | pin)
        mps=("$BENCH_DIR/mnt-a")
        mount_bicache "${mps[0]}" "$BENCH_DIR/cache-a" "$dir/bicache-a.log" --cache-policy "$name"
        lists=("")
        ;;
    sharded)
        mps=("$BENCH_DIR/mnt-0" "$BENCH_DIR/mnt-1")
        # Warm-up time: from the first mount command to the prefetch's end (old cache dirs
        # are removed first: deleting them is not part of it).
        rm -rf "$BENCH_DIR/cache-0" "$BENCH_DIR/cache-1"
        t0=$(date +%s.%N)
        for k in 0 1; do
            mount_bicache "${mps[$k]}" "$BENCH_DIR/cache-$k" "$dir/bicache-$k.log" \
                --shard node --shard-index "$k" --shard-count 2
        done
        for k in 0 1; do
            "$BIN/bicache" warm "${mps[$k]}" --quiet
            t1=$(date +%s.%N)
            elapsed "$t0" "$t1" >"$dir/warm$k.seconds"
            stats_of "${mps[$k]}" >"$dir/warmed$k.json"
            cp "${mps[$k]}/.bicache/shard.txt" "$dir/shard$k.txt"
            lists+=("$dir/shard$k.txt")
        done
        # The two shards must be disjoint and cover the dataset (shard.txt is the contract
        # the readers rely on).
        python3 - "$FILES_TSV" "$dir/shard0.txt" "$dir/shard1.txt" <<'PY'
import sys
every = {l.split("\t")[0] for l in open(sys.argv[1])}
a, b = ({l.rstrip("\n") for l in open(p) if l.strip()} for p in sys.argv[2:4])
if a & b or (a | b) != every:
    sys.exit(f"shards overlap in {len(a & b)} files or miss {len(every - (a | b))}")
PY
        log "run $RUN: sharded: warm after $(cat "$dir/warm0.seconds") / $(cat "$dir/warm1.seconds") s; $(stats_of "${mps[0]}" | json_field prefetch.state) / $(stats_of "${mps[1]}" | json_field prefetch.state)"
        ;;
    esac

    for e in $(seq 1 "$EPOCHS"); do
        drop_caches
        slowfs_snapshot "$dir/e$e-slowfs0.json"
        for k in "${!mps[@]}"; do stats_of "${mps[$k]}" >"$dir/e$e-before$k.json"; done
        t0=$(date +%s.%N)
        READER_PIDS=()
        for k in "${!mps[@]}"; do
            seed=$((SEED + 1000 * RUN + 10 * e + k))
            args=(read "${mps[$k]}" "$FILES_TSV" --seed "$seed" --workers "$WORKERS")
            [ -z "${lists[$k]}" ] || args+=(--only "${lists[$k]}")
            python3 "$UTIL" "${args[@]}" >"$dir/e$e-read$k.json" &
            READER_PIDS+=($!)
        done
        for k in "${!READER_PIDS[@]}"; do
            wait "${READER_PIDS[$k]}" || die "epoch $e readers of ${mps[$k]} failed"
        done
        READER_PIDS=()
        t1=$(date +%s.%N)
        for mp in "${mps[@]}"; do wait_writeback "$mp"; done
        slowfs_snapshot "$dir/e$e-slowfs1.json"
        args=(epoch --seconds "$(elapsed "$t0" "$t1")" --slowfs "$dir/e$e-slowfs0.json" "$dir/e$e-slowfs1.json")
        for k in "${!mps[@]}"; do
            stats_of "${mps[$k]}" >"$dir/e$e-after$k.json"
            args+=(--mount "$dir/e$e-read$k.json" "$dir/e$e-before$k.json" "$dir/e$e-after$k.json")
        done
        python3 "$UTIL" "${args[@]}" >"$dir/epoch$e.json"
        log "run $RUN: $name epoch $e: $(python3 "$UTIL" brief "$dir/epoch$e.json")"
    done
    for k in "${!mps[@]}"; do
        if [ "$name" = sharded ]; then
            python3 "$UTIL" mount "shard $k" "$dir/e1-after$k.json" \
                --warm-seconds "$(cat "$dir/warm$k.seconds")" --warmed "$dir/warmed$k.json" \
                >"$dir/mount$k.json"
        else
            python3 "$UTIL" mount "single" "$dir/e1-after$k.json" >"$dir/mount$k.json"
        fi
    done
    unmount_all
    rm -rf "$BENCH_DIR"/cache-* # logs are in $dir; the chunks are not needed any more
}

# ------------------------------------------------------------------------------- runs
RESULTS=$OUT/runs.jsonl
: >"$RESULTS"
start_slowfs
for RUN in $(seq 1 "$RUNS"); do
    for s in $SYSTEMS; do
        log "run $RUN: $s"
        run_system "$s"
    done
    # shellcheck disable=SC2086 # SYSTEMS is a list of words
    python3 "$UTIL" assemble "$RUN" "$OUT/run$RUN" $SYSTEMS >>"$RESULTS"
done
stop_slowfs

# ----------------------------------------------------------------------------- report
MACHINE="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), \
$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), \
cache dirs and dataset on $(df -T "$BENCH_DIR" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
python3 "$UTIL" model "$FILES_TSV" --capacity "$DISK_BYTES" --pin-share "$PIN_SHARE" \
    --epochs "$EPOCHS" --seed "$SEED" >"$OUT/model.json"
export MACHINE COMMAND_LINE GIT_REV COUNT TOTAL_BYTES MIN_KIB MAX_KIB DIRS SEED LATENCY_MS \
    BANDWIDTH_MBPS RAM DISK_BYTES WORKERS EPOCHS PIN_SHARE SYSTEMS
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') python3 - "$OUT/meta.json" "$OUT/model.json" <<'PY'
import json, os, sys
E = os.environ
known = {
    "lru": {"name": "lru", "label": "unsharded, plain LRU", "args": "--cache-policy lru"},
    "pin": {"name": "pin", "label": "unsharded, pinning (default)",
            "args": "--cache-policy pin", "target": 0.45},
    "sharded": {"name": "sharded", "label": "2-way sharded (2 mounts, one per shard)",
                "args": "--shard node --shard-index {0,1} --shard-count 2", "target": 0.99},
}
meta = {
    "date": E["BENCH_DATE"], "git_rev": E["GIT_REV"], "machine": E["MACHINE"],
    "command": E["COMMAND_LINE"], "nfiles": int(E["COUNT"]), "total_bytes": int(E["TOTAL_BYTES"]),
    "min_kib": int(E["MIN_KIB"]), "max_kib": int(E["MAX_KIB"]), "dirs": int(E["DIRS"]),
    "seed": int(E["SEED"]), "latency_ms": E["LATENCY_MS"], "bandwidth_mbps": E["BANDWIDTH_MBPS"],
    "ram": E["RAM"], "disk_bytes": int(E["DISK_BYTES"]), "chunk_size": 1 << 20,
    "workers": int(E["WORKERS"]), "epochs": int(E["EPOCHS"]), "pin_share": float(E["PIN_SHARE"]),
    "systems": [known[n] for n in E["SYSTEMS"].split()],
    "model": json.load(open(sys.argv[2])),
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
python3 "$UTIL" report "$RESULTS" "$OUT/meta.json" >"$OUT/report.md"
cat "$OUT/report.md"

if [ "$WRITE_DOC" = 1 ]; then
    write_doc_section "$DOC" "$OUT/report.md" bench-sharding Benchmark
    log "wrote $DOC"
fi
log "raw results: $OUT"
