#!/usr/bin/env bash
# Cache benchmark: bicache mounted over a simulated slow shared filesystem (slowfs).
#
# For each run: a fresh cache dir, slowfs serving a reproducible ~2 GiB tree, bicache
# mounted over the slowfs mountpoint, then
#   direct pass    (before bicache is mounted) read everything from slowfs itself: the
#                  no-cache baseline
#   cold pass      read every file whole through bicache (nothing cached yet)
#   warm pass      drop the page cache, read everything again (RAM + SSD tiers)
#   remount pass   unmount, drop the page cache, mount again on the same cache dir,
#                  read everything again (what survives a remount: the SSD tier)
# recording, per pass, the wall time, the bytes bicache says it pulled from its source,
# the bytes slowfs says it served, and the daemon's RSS (sampled) and VmHWM.
# Medians over RUNS runs are written to docs/BENCHMARKS.md.
#
# Needs root (drop_caches, FUSE mounts), python3, /dev/fuse. Usage:
#   scripts/bench-cache.sh                 # RUNS=3
#   RUNS=1 scripts/bench-cache.sh          # quick
# Knobs (environment): RUNS, BENCH_DIR, LATENCY_MS, META_LATENCY_MS, BANDWIDTH_MBPS,
#   SLOWFS_THREADS, RAM, DISK, WORKERS, SEED, REMOUNT (1/0), BASELINE (1/0), WRITE_DOC (1/0),
#   SKIP_BUILD (1/0), BIG_FILES, BIG_MIB, SMALL_FILES, SMALL_DIRS, EXTRA_MOUNT_ARGS,
#   BICACHE_REV (build bicache from that commit instead of the working tree),
#   BICACHE_BIN (use this bicache binary). BENCH_DIR (default /tmp/bicache-bench) must be
#   empty or made by this script: the dataset is kept there between invocations.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$REPO/scripts/lib.sh"
# The exact command, for the report: the knobs given in the environment, then the script.
COMMAND_LINE=
for v in RUNS BENCH_DIR LATENCY_MS META_LATENCY_MS BANDWIDTH_MBPS SLOWFS_THREADS RAM DISK \
    WORKERS SEED REMOUNT BASELINE BIG_FILES BIG_MIB SMALL_FILES SMALL_DIRS EXTRA_MOUNT_ARGS \
    BICACHE_REV BICACHE_BIN; do
    if [ -n "${!v+set}" ]; then COMMAND_LINE+="$v=$(printf %q "${!v}") "; fi
done
COMMAND_LINE+="scripts/bench-cache.sh"

RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/bicache-bench}
LATENCY_MS=${LATENCY_MS:-1}
META_LATENCY_MS=${META_LATENCY_MS:-$LATENCY_MS}
BANDWIDTH_MBPS=${BANDWIDTH_MBPS:-200}
SLOWFS_THREADS=${SLOWFS_THREADS:-8}
RAM=${RAM:-256MiB}
DISK=${DISK:-4GiB}
WORKERS=${WORKERS:-4}
SEED=${SEED:-20240601}
REMOUNT=${REMOUNT:-1}
BASELINE=${BASELINE:-1}
WRITE_DOC=${WRITE_DOC:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
BIG_FILES=${BIG_FILES:-16}
BIG_MIB=${BIG_MIB:-64}
SMALL_FILES=${SMALL_FILES:-1000}
SMALL_DIRS=${SMALL_DIRS:-10}
EXTRA_MOUNT_ARGS=${EXTRA_MOUNT_ARGS:-}
BICACHE_REV=${BICACHE_REV:-}
BICACHE_BIN=${BICACHE_BIN:-}
DOC=${DOC:-$REPO/docs/BENCHMARKS.md}

BIN=$BENCH_DIR/bin
DATA=$BENCH_DIR/data
SLOW_MNT=$BENCH_DIR/slow
BC_MNT=$BENCH_DIR/mnt
CACHE=$BENCH_DIR/cache
OUT=$BENCH_DIR/results
FILES=$BENCH_DIR/files.tsv

SLOWFS_PID=
SAMPLER_PID=
DAEMON_PID=




stop_sampler() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=
    fi
}

unmount_bicache() {
    if is_mounted "$BC_MNT"; then
        "$BIN/bicache" unmount "$BC_MNT" || umount -l "$BC_MNT" || true
    fi
    # The daemon exits once unmounted and flushed; make sure it did (it is ours).
    if [ -n "$DAEMON_PID" ]; then
        local i
        for i in $(seq 1 100); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DAEMON_PID" 2>/dev/null; then
            log "bicache daemon $DAEMON_PID still alive after unmount; sending SIGTERM"
            kill -TERM "$DAEMON_PID" 2>/dev/null || true
        fi
        DAEMON_PID=
    fi
}

stop_slowfs() {
    if [ -n "$SLOWFS_PID" ]; then
        kill -TERM "$SLOWFS_PID" 2>/dev/null || true
        wait "$SLOWFS_PID" 2>/dev/null || true
        SLOWFS_PID=
    fi
    if is_mounted "$SLOW_MNT"; then umount -l "$SLOW_MNT" || true; fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_sampler
    unmount_bicache
    stop_slowfs
    [ "$rc" -eq 0 ] || log "failed (exit $rc); everything unmounted.$([ -d "$OUT" ] && echo " Logs: $OUT")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- checks
[ "$(id -u)" -eq 0 ] || die "must run as root (drop_caches, FUSE mounts)"
[ -e /dev/fuse ] || die "/dev/fuse missing"
command -v python3 >/dev/null || die "python3 missing"
case "$BENCH_DIR" in *[[:space:]]*) die "BENCH_DIR must not contain spaces" ;; esac
[ "$RUNS" -ge 1 ] 2>/dev/null || die "RUNS must be >= 1"
# The script deletes and recreates things under BENCH_DIR: only in a directory it owns.
MARKER=.bicache-bench
if [ -d "$BENCH_DIR" ] && [ ! -e "$BENCH_DIR/$MARKER" ] && [ -n "$(ls -A "$BENCH_DIR")" ]; then
    die "BENCH_DIR=$BENCH_DIR is not empty and was not made by this script"
fi
mkdir -p "$BENCH_DIR"
touch "$BENCH_DIR/$MARKER"
mkdir -p "$BIN" "$SLOW_MNT" "$BC_MNT"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)
BIN=$BENCH_DIR/bin DATA=$BENCH_DIR/data SLOW_MNT=$BENCH_DIR/slow BC_MNT=$BENCH_DIR/mnt
CACHE=$BENCH_DIR/cache OUT=$BENCH_DIR/results FILES=$BENCH_DIR/files.tsv
# Leftovers of an interrupted earlier run (only our own mount points).
if is_mounted "$BC_MNT"; then umount -l "$BC_MNT"; fi
if is_mounted "$SLOW_MNT"; then umount -l "$SLOW_MNT"; fi
rm -rf "$OUT"
mkdir -p "$OUT"

# ----------------------------------------------------------------------------- build
# Binaries are copied aside so a rebuild of the tree during the run cannot change them.
# BICACHE_REV=<commit> builds bicache from that commit (git archive, own target dir)
# instead of the working tree, e.g. while the working tree is being edited.
if [ -n "$BICACHE_BIN" ]; then
    [ -x "$BICACHE_BIN" ] || die "BICACHE_BIN=$BICACHE_BIN is not executable"
    cp "$BICACHE_BIN" "$BIN/bicache.new" && mv "$BIN/bicache.new" "$BIN/bicache"
    GIT_REV="prebuilt binary $BICACHE_BIN"
    [ "$SKIP_BUILD" = 1 ] || (cd "$REPO" && cargo build --release --example slowfs) >&2
elif [ -n "$BICACHE_REV" ]; then
    rev=$(cd "$REPO" && git rev-parse --verify "$BICACHE_REV^{commit}") || die "bad BICACHE_REV"
    log "building bicache $rev from git (release)"
    rm -rf "$BENCH_DIR/src"
    mkdir -p "$BENCH_DIR/src"
    (cd "$REPO" && git archive "$rev") | tar -x -C "$BENCH_DIR/src"
    (cd "$BENCH_DIR/src" && CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --release --bin bicache) >&2
    install -m 0755 "$BENCH_DIR/target/release/bicache" "$BIN/bicache"
    GIT_REV=$(cd "$REPO" && git rev-parse --short "$rev")
    [ "$SKIP_BUILD" = 1 ] || (cd "$REPO" && cargo build --release --example slowfs) >&2
else
    [ "$SKIP_BUILD" = 1 ] || (cd "$REPO" && cargo build --release --bin bicache --example slowfs) >&2
    install -m 0755 "$REPO/target/release/bicache" "$BIN/bicache"
    GIT_REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(cd "$REPO" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        GIT_REV="$GIT_REV + uncommitted changes in src/"
    fi
fi
install -m 0755 "$REPO/target/release/examples/slowfs" "$BIN/slowfs"

# --------------------------------------------------------------------------- dataset
# Reproducible: file sizes and contents come from random.Random(SEED). Generated once and
# reused while the parameters match.
STAMP="seed=$SEED big=${BIG_FILES}x${BIG_MIB}MiB small=${SMALL_FILES}/${SMALL_DIRS}dirs v1"
if [ "$(cat "$BENCH_DIR/data.stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "generating dataset ($STAMP) in $DATA"
    rm -rf "$DATA" "$BENCH_DIR/data.stamp"
    python3 - "$DATA" "$SEED" "$BIG_FILES" "$BIG_MIB" "$SMALL_FILES" "$SMALL_DIRS" <<'PY'
import os, random, sys
root, seed, big, big_mib, small, dirs = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(seed)
os.makedirs(os.path.join(root, "big"))
MiB = 1 << 20
for i in range(big):
    with open(os.path.join(root, "big", f"big{i:02d}.bin"), "wb") as f:
        for _ in range(big_mib):
            f.write(rng.randbytes(MiB))
for d in range(dirs):
    os.makedirs(os.path.join(root, f"d{d:02d}"))
for i in range(small):
    size = rng.randint(MiB // 2, MiB + MiB // 2)  # mean 1 MiB
    path = os.path.join(root, f"d{i % dirs:02d}", f"f{i:04d}.bin")
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))
PY
    echo "$STAMP" >"$BENCH_DIR/data.stamp"
fi
python3 "$REPO/scripts/bench_data.py" list "$DATA" >"$FILES"
TOTAL_BYTES=$(awk -F'\t' '{ s += $2 } END { printf "%d", s }' "$FILES")
NFILES=$(wc -l <"$FILES")
log "dataset: $NFILES files, $TOTAL_BYTES bytes"

# ------------------------------------------------------------------------- helpers
# Reads every file of the list whole, WORKERS threads, seeded random order, 1 MiB reads.
# Prints {"seconds":S,"bytes":B,"files":N}; fails on any error or size mismatch.
read_all() {
    python3 - "$1" "$FILES" "$2" "$WORKERS" <<'PY'
import json, mmap, os, random, sys, threading, time
root, listing, seed, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = []
with open(listing) as f:
    for line in f:
        rel, size = line.rstrip("\n").split("\t")
        files.append((rel, int(size)))
random.Random(seed).shuffle(files)
lock = threading.Lock()
state = {"next": 0, "bytes": 0, "errors": []}

def worker():
    # Page-aligned buffer: an unaligned 1 MiB read spans 257 pages, which a direct-I/O
    # FUSE source (slowfs) has to split into two requests.
    view = memoryview(mmap.mmap(-1, 1 << 20))
    while True:
        with lock:
            i = state["next"]
            state["next"] += 1
        if i >= len(files):
            return
        rel, size = files[i]
        got = 0
        try:
            with open(os.path.join(root, rel), "rb", buffering=0) as f:
                while n := f.readinto(view):
                    got += n
        except OSError as e:
            with lock:
                state["errors"].append(f"{rel}: {e}")
            continue
        with lock:
            state["bytes"] += got
            if got != size:
                state["errors"].append(f"{rel}: read {got} bytes, expected {size}")

start = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
seconds = time.monotonic() - start
if state["errors"]:
    print("\n".join(state["errors"][:20]), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"seconds": seconds, "bytes": state["bytes"], "files": len(files)}))
PY
}

# Samples the daemon's VmRSS (kB) every 0.2 s into $1, one number per line.
start_sampler() {
    local pid=$1 file=$2
    (
        while [ -r "/proc/$pid/status" ]; do
            awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true
            sleep 0.2
        done
    ) >>"$file" &
    SAMPLER_PID=$!
}

vm_hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

bicache_stats() { "$BIN/bicache" stats "$BC_MNT" --json; }

json_get() { # json_get FILE key.sub
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[k]
print(d)' "$1" "$2"
}

# slowfs rewrites its stats file every 0.5 s: wait for a fresh copy.
slowfs_snapshot() {
    sleep 1.1
    cp "$OUT/slowfs.json" "$1"
}

# Waits until the SSD tier's write-back queue has drained (disk writes stop moving),
# so the warm pass measures a settled cache. Gives up after 30 s.
wait_writeback() {
    local prev= cur i
    for i in $(seq 1 120); do
        cur=$(bicache_stats | python3 -c 'import json,sys; d=json.load(sys.stdin)["disk"]
print(d["writes"] + d.get("write_errors", 0) + d.get("writes_dropped", 0))')
        [ "$cur" = "$prev" ] && return 0
        prev=$cur
        sleep 0.25
    done
    log "write-back still moving after 30 s"
}

mount_bicache() {
    # shellcheck disable=SC2086 # EXTRA_MOUNT_ARGS is a list of words
    "$BIN/bicache" mount "$SLOW_MNT" "$BC_MNT" --cache-dir "$CACHE" --ram "$RAM" --disk "$DISK" \
        --log-file "$OUT/bicache-run$RUN.log" $EXTRA_MOUNT_ARGS
    is_mounted "$BC_MNT" || die "bicache mount returned but $BC_MNT is not mounted"
    DAEMON_PID=$(bicache_stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
}

# One timed pass: pass NAME SEED. Leaves $OUT/runN-NAME.{read,bicache,slowfs}.json
# (bicache/slowfs: counters after the pass).
run_pass() {
    local name=$1 seed=$2 dir=$OUT/run$RUN
    log "run $RUN: $name pass"
    drop_caches
    read_all "$BC_MNT" "$seed" >"$dir-$name.read.json"
    slowfs_snapshot "$dir-$name.slowfs.json"
    bicache_stats >"$dir-$name.bicache.json"
    log "run $RUN: $name pass: $(cat "$dir-$name.read.json")"
}

# --------------------------------------------------------------------------- runs
RESULTS=$OUT/runs.jsonl
: >"$RESULTS"
for RUN in $(seq 1 "$RUNS"); do
    rm -rf "$CACHE"
    rm -f "$OUT/slowfs.json" "$OUT/rss-run$RUN.txt"
    "$BIN/slowfs" "$DATA" "$SLOW_MNT" --latency-ms "$LATENCY_MS" \
        --meta-latency-ms "$META_LATENCY_MS" --bandwidth-mbps "$BANDWIDTH_MBPS" \
        --threads "$SLOWFS_THREADS" --stats-file "$OUT/slowfs.json" \
        2>"$OUT/slowfs-run$RUN.log" &
    SLOWFS_PID=$!
    wait_mounted "$SLOW_MNT" || die "slowfs did not mount (see $OUT/slowfs-run$RUN.log)"
    ls "$SLOW_MNT" >/dev/null

    if [ "$BASELINE" = 1 ]; then
        log "run $RUN: direct pass (slowfs without bicache)"
        slowfs_snapshot "$OUT/run$RUN-direct0.slowfs.json"
        drop_caches
        read_all "$SLOW_MNT" $((SEED + 100 * RUN)) >"$OUT/run$RUN-direct.read.json"
        slowfs_snapshot "$OUT/run$RUN-direct.slowfs.json"
        log "run $RUN: direct pass: $(cat "$OUT/run$RUN-direct.read.json")"
    fi

    mount_bicache
    slowfs_snapshot "$OUT/run$RUN-start.slowfs.json"
    bicache_stats >"$OUT/run$RUN-start.bicache.json"
    start_sampler "$DAEMON_PID" "$OUT/rss-run$RUN.txt"

    run_pass cold $((SEED + 100 * RUN + 1))
    wait_writeback
    bicache_stats >"$OUT/run$RUN-settled.bicache.json"
    slowfs_snapshot "$OUT/run$RUN-settled.slowfs.json"
    run_pass warm $((SEED + 100 * RUN + 2))

    HWM=$(vm_hwm_kb "$DAEMON_PID")
    stop_sampler
    if [ "$REMOUNT" = 1 ]; then
        unmount_bicache
        mount_bicache
        bicache_stats >"$OUT/run$RUN-remounted.bicache.json"
        slowfs_snapshot "$OUT/run$RUN-remounted.slowfs.json"
        start_sampler "$DAEMON_PID" "$OUT/rss-run$RUN.txt"
        run_pass remount $((SEED + 100 * RUN + 3))
        HWM2=$(vm_hwm_kb "$DAEMON_PID")
        stop_sampler
        if [ "$HWM2" -gt "$HWM" ]; then HWM=$HWM2; fi
    fi
    unmount_bicache
    stop_slowfs

    python3 - "$OUT" "$RUN" "$HWM" "$REMOUNT" "$BASELINE" >>"$RESULTS" <<'PY'
import json, os, sys
out, run, hwm_kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
remount, baseline = sys.argv[4] == "1", sys.argv[5] == "1"
def load(name):
    with open(os.path.join(out, f"run{run}-{name}.json")) as f:
        return json.load(f)
rss = [int(l) for l in open(os.path.join(out, f"rss-run{run}.txt")) if l.strip().isdigit()]
r = {"run": run, "vm_hwm_kb": hwm_kb, "rss_max_sampled_kb": max(rss, default=0)}
# (pass, counters before, counters after): source bytes are deltas over the pass.
passes = [("cold", "start", "cold"), ("warm", "settled", "warm")]
if remount:
    passes.append(("remount", "remounted", "remount"))
for name, before, after in passes:
    rd = load(f"{name}.read")
    b0, b1 = load(f"{before}.bicache"), load(f"{after}.bicache")
    s0, s1 = load(f"{before}.slowfs"), load(f"{after}.slowfs")
    r[name] = {
        "seconds": rd["seconds"],
        "bytes": rd["bytes"],
        "mbps": rd["bytes"] / rd["seconds"] / 1e6,
        "bicache_source_bytes": b1["source"]["bytes"] - b0["source"]["bytes"],
        "slowfs_bytes": s1["bytes"] - s0["bytes"],
        "slowfs_reads": s1["reads"] - s0["reads"],
        "slowfs_meta": s1["meta"] - s0["meta"],
        "ram_hits": b1["ram"]["hits"] - b0["ram"]["hits"],
        "disk_hits": b1["disk"]["hits"] - b0["disk"]["hits"],
        "disk_writes_dropped": b1["disk"].get("writes_dropped", 0) - b0["disk"].get("writes_dropped", 0),
        "disk_bytes_after": b1["disk"]["bytes"],
        "ram_bytes_after": b1["ram"]["bytes"],
        "ram_capacity": b1["ram"]["capacity"],
    }
if baseline:
    rd, s0, s1 = load("direct.read"), load("direct0.slowfs"), load("direct.slowfs")
    r["direct"] = {
        "seconds": rd["seconds"],
        "bytes": rd["bytes"],
        "mbps": rd["bytes"] / rd["seconds"] / 1e6,
        "slowfs_bytes": s1["bytes"] - s0["bytes"],
        "slowfs_reads": s1["reads"] - s0["reads"],
        "slowfs_meta": s1["meta"] - s0["meta"],
    }
print(json.dumps(r))
PY
    log "run $RUN done: $(tail -n 1 "$RESULTS")"
done

# -------------------------------------------------------------------------- report
MACHINE="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), \
$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), \
cache dir and dataset on $(df -T "$BENCH_DIR" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
REPORT=$OUT/report.md
export MACHINE COMMAND_LINE GIT_REV LATENCY_MS META_LATENCY_MS BANDWIDTH_MBPS SLOWFS_THREADS \
    NFILES TOTAL_BYTES BIG_FILES BIG_MIB SMALL_FILES SMALL_DIRS SEED RAM DISK EXTRA_MOUNT_ARGS WORKERS
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') python3 - "$RESULTS" "$REPORT" <<'PY'
import json, os, statistics, sys
E = os.environ
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
MiB = 1 << 20
limit_kb = (runs[0]["cold"]["ram_capacity"] + 100 * MiB) / 1024
remount = "remount" in runs[0]
baseline = "direct" in runs[0]
passes = ["cold", "warm"] + (["remount"] if remount else [])

def med(f):
    return statistics.median(f(r) for r in runs)

def pct(p, r, key="bicache_source_bytes"):
    return 100.0 * r[p][key] / r[p]["bytes"]

def both(p):
    return (f"{med(lambda r: pct(p, r)):.1f}% / "
            f"{med(lambda r: pct(p, r, 'slowfs_bytes')):.1f}%")

mount_args = f"--cache-dir <fresh dir> --ram {E['RAM']} --disk {E['DISK']}"
if E["EXTRA_MOUNT_ARGS"]:
    mount_args += " " + E["EXTRA_MOUNT_ARGS"]
L = [
    "## Cache benchmark (`scripts/bench-cache.sh`)",
    "",
    f"Generated by the script on {E['BENCH_DATE']}; bicache at `{E['GIT_REV']}`.",
    "",
    f"- Machine: {E['MACHINE']}. Disk I/O there is cached by the host, so absolute numbers "
    "swing between runs; compare within one run and read the medians.",
    f"- Command: `{E['COMMAND_LINE']}` (as root, from the repository root).",
    f"- Source: `slowfs` (examples/slowfs.rs) serving a local copy of the dataset with "
    f"{E['LATENCY_MS']} ms per read request, {E['META_LATENCY_MS']} ms per metadata request, "
    f"{E['BANDWIDTH_MBPS']} MB/s in total, {E['SLOWFS_THREADS']} threads, nothing cached by "
    "the kernel (direct I/O, zero TTLs).",
    f"- Dataset: {E['NFILES']} files, {int(E['TOTAL_BYTES']):,} bytes: {E['BIG_FILES']} x "
    f"{E['BIG_MIB']} MiB + {E['SMALL_FILES']} files of 0.5-1.5 MiB in {E['SMALL_DIRS']} "
    f"directories, contents from `random.Random({E['SEED']})`.",
    f"- bicache: `bicache mount SLOWFS_MNT MNT {mount_args}`, other options at their defaults.",
    f"- A pass reads every file whole (1 MiB reads, {E['WORKERS']} threads, seeded random "
    "order, a new order per pass), timed, right after `sync; echo 3 > "
    "/proc/sys/vm/drop_caches`. Cold: fresh cache dir. Warm: same mount, once the SSD "
    "write-back stopped moving. Remount: `bicache unmount`, mount again on the same cache dir."
    + (" No cache: the same pass on the slowfs mount itself, before bicache is mounted."
       if baseline else ""),
    "- Source bytes: bicache's own `source.bytes` counter, and what slowfs says it served, "
    "both as deltas over the pass, in % of the bytes the pass read. MB = 10^6 bytes.",
    "- RSS: the daemon's VmHWM from /proc/PID/status, read just before each unmount (max of the "
    "run's mounts), and the largest VmRSS sampled every 0.2 s. Limit = RAM budget + 100 MiB = "
    f"{limit_kb / 1024:.0f} MiB.",
    "",
    f"Medians of {len(runs)} run(s):",
    "",
    "| metric | median |",
    "|---|---|",
]
if baseline:
    L += [
        f"| no cache: same reader on the slowfs mount | {med(lambda r: r['direct']['mbps']):.1f} MB/s |",
        f"| cold / no cache | {med(lambda r: r['cold']['mbps'] / r['direct']['mbps']):.2f}x |",
    ]
L += [
    f"| cold read | {med(lambda r: r['cold']['mbps']):.1f} MB/s |",
    f"| warm read | {med(lambda r: r['warm']['mbps']):.1f} MB/s |",
    f"| warm / cold | {med(lambda r: r['warm']['mbps'] / r['cold']['mbps']):.2f}x |",
    f"| cold: bytes pulled from the source (bicache / slowfs) | {both('cold')} |",
    f"| warm: bytes pulled from the source (bicache / slowfs) | {both('warm')} |",
]
if remount:
    L += [
        f"| after remount: read | {med(lambda r: r['remount']['mbps']):.1f} MB/s |",
        f"| after remount: bytes pulled from the source (bicache / slowfs) | {both('remount')} |",
    ]
hwm = med(lambda r: r["vm_hwm_kb"])
verdict = "within" if hwm <= limit_kb else "OVER"
L += [
    f"| daemon peak RSS (VmHWM) | {hwm / 1024:.0f} MiB, {verdict} the {limit_kb / 1024:.0f} MiB limit |",
    f"| daemon largest sampled VmRSS | {med(lambda r: r['rss_max_sampled_kb']) / 1024:.0f} MiB |",
    "",
    "Per run (source bytes in MB and in % of the bytes read):",
    "",
    "| run | pass | seconds | MB/s | bicache source bytes | slowfs bytes | slowfs reads / meta ops "
    "| RAM hits | SSD hits | SSD writes dropped |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for r in runs:
    if baseline:
        x = r["direct"]
        L.append(
            f"| {r['run']} | no cache | {x['seconds']:.2f} | {x['mbps']:.1f} | - "
            f"| {x['slowfs_bytes'] / 1e6:,.0f} ({pct('direct', r, 'slowfs_bytes'):.1f}%) "
            f"| {x['slowfs_reads']} / {x['slowfs_meta']} | - | - | - |"
        )
    for p in passes:
        x = r[p]
        L.append(
            f"| {r['run']} | {p} | {x['seconds']:.2f} | {x['mbps']:.1f} "
            f"| {x['bicache_source_bytes'] / 1e6:,.0f} ({pct(p, r):.1f}%) "
            f"| {x['slowfs_bytes'] / 1e6:,.0f} ({pct(p, r, 'slowfs_bytes'):.1f}%) "
            f"| {x['slowfs_reads']} / {x['slowfs_meta']} | {x['ram_hits']} | {x['disk_hits']} "
            f"| {x['disk_writes_dropped']} |"
        )
L += ["", "| run | VmHWM | largest sampled VmRSS | limit |", "|---|---|---|---|"]
for r in runs:
    L.append(
        f"| {r['run']} | {r['vm_hwm_kb'] / 1024:.0f} MiB | {r['rss_max_sampled_kb'] / 1024:.0f} MiB "
        f"| {limit_kb / 1024:.0f} MiB |"
    )
with open(sys.argv[2], "w") as f:
    f.write("\n".join(L) + "\n")
PY
cat "$REPORT"

if [ "$WRITE_DOC" = 1 ]; then
    write_doc_section "$DOC" "$REPORT" bench-cache
    log "wrote $DOC"
fi
log "raw results: $OUT"
