#!/usr/bin/env bash
# The suite benchmark (issue 5): bicache side by side with the local disk, a plain FUSE
# passthrough, the slow source itself and rclone's VFS cache, on fio sequential and random
# reads, a DataLoader-like epoch reader over an ImageNet-like tree, a zarr reader and a
# metadata walk; cold and warm; medians of RUNS runs written to docs/BENCHMARKS.md
# (between the bench-suite markers) with a plot, docs/bench-epochs.png.
#
# Systems (all in one run, on the same data):
#   native       the local copy, read directly (the physical limit)
#   bindfs       bindfs -r --multithreaded over the local copy (plain FUSE overhead)
#   slowfs       the slow source read directly: examples/slowfs.rs over the local copy
#                (LATENCY_MS per request, BANDWIDTH_MBPS in total, nothing kernel-cached)
#   rclone       rclone mount --vfs-cache-mode full over the slowfs mount
#   bicache      bicache mount over the slowfs mount
#   bicache-imm  the same with --immutable (metadata walk and epochs only)
#
# Needs root (drop_caches, FUSE mounts), /dev/fuse, fio, bindfs, rclone, python3 with numpy
# and zarr (matplotlib for the plot; without it the plot is skipped). Usage:
#   scripts/bench.sh                     # RUNS=3: about 65 min here (one run: about 21 min)
#   RUNS=1 scripts/bench.sh              # quick
#   BICACHE_REV=HEAD scripts/bench.sh    # bicache and slowfs built from a commit (git archive)
#   RUNS=1 SYSTEMS="native bicache" WORKLOADS=seq WRITE_DOC=0 scripts/bench.sh   # one question
# Knobs (environment): RUNS, BENCH_DIR (default /tmp/bicache-bench2; must be empty or made
#   by this script), SYSTEMS (a subset of the list above), WORKLOADS (a subset of
#   "walk epoch zarr seq rand"), LATENCY_MS, META_LATENCY_MS, BANDWIDTH_MBPS,
#   SLOWFS_THREADS, RAM, DISK, EXTRA_MOUNT_ARGS (bicache), RCLONE_EXTRA_ARGS, WORKERS,
#   EPOCHS, SLOWFS_EPOCHS, RAND_RUNTIME, RAND_COLD (1/0), SEED, BIG_FILES, BIG_MIB,
#   SMALL_FILES, SMALL_DIRS, SMALL_MIN_KIB, SMALL_MAX_KIB, ZARR_ROWS, ZARR_CHUNK_ROWS,
#   WRITE_DOC (1/0: replace the bench-suite section of docs/BENCHMARKS.md and the plot;
#   default 1 for the whole suite, 0 when SYSTEMS or WORKLOADS is a subset), REPORT_ONLY=1
#   (no runs: rebuild the report, and the doc with WRITE_DOC=1, from $BENCH_DIR/results),
#   SKIP_BUILD (1/0), BICACHE_REV, BICACHE_BIN. Raw results stay in $BENCH_DIR/results; one
#   invocation at a time per BENCH_DIR (a lock), as a new run deletes the last one's results.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$REPO/scripts/lib.sh"
SCRIPTS=$REPO/scripts
COMMAND_LINE=
for v in RUNS BENCH_DIR SYSTEMS WORKLOADS LATENCY_MS META_LATENCY_MS BANDWIDTH_MBPS SLOWFS_THREADS RAM \
    DISK EXTRA_MOUNT_ARGS RCLONE_EXTRA_ARGS WORKERS EPOCHS SLOWFS_EPOCHS RAND_RUNTIME RAND_COLD \
    SEED BIG_FILES BIG_MIB SMALL_FILES SMALL_DIRS SMALL_MIN_KIB SMALL_MAX_KIB ZARR_ROWS \
    ZARR_CHUNK_ROWS WRITE_DOC BICACHE_REV BICACHE_BIN; do
    if [ -n "${!v+set}" ]; then COMMAND_LINE+="$v=$(printf %q "${!v}") "; fi
done
COMMAND_LINE+="scripts/bench.sh"

RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/bicache-bench2}
SYSTEMS=${SYSTEMS:-native bindfs slowfs rclone bicache bicache-imm}
WORKLOADS=${WORKLOADS:-walk epoch zarr seq rand}
LATENCY_MS=${LATENCY_MS:-1}
META_LATENCY_MS=${META_LATENCY_MS:-$LATENCY_MS}
BANDWIDTH_MBPS=${BANDWIDTH_MBPS:-200}
SLOWFS_THREADS=${SLOWFS_THREADS:-8}
RAM=${RAM:-2GiB}
DISK=${DISK:-8GiB}
EXTRA_MOUNT_ARGS=${EXTRA_MOUNT_ARGS:-}
RCLONE_EXTRA_ARGS=${RCLONE_EXTRA_ARGS:-}
WORKERS=${WORKERS:-4}
EPOCHS=${EPOCHS:-3}
SLOWFS_EPOCHS=${SLOWFS_EPOCHS:-1}
RAND_RUNTIME=${RAND_RUNTIME:-8}
RAND_COLD=${RAND_COLD:-1}
SEED=${SEED:-20240611}
BIG_FILES=${BIG_FILES:-4}
BIG_MIB=${BIG_MIB:-512}
SMALL_FILES=${SMALL_FILES:-20000}
SMALL_DIRS=${SMALL_DIRS:-100}
SMALL_MIN_KIB=${SMALL_MIN_KIB:-16}
SMALL_MAX_KIB=${SMALL_MAX_KIB:-256}
ZARR_ROWS=${ZARR_ROWS:-8192}
ZARR_CHUNK_ROWS=${ZARR_CHUNK_ROWS:-4}
WRITE_DOC_GIVEN=${WRITE_DOC+set}
WRITE_DOC=${WRITE_DOC:-1}
REPORT_ONLY=${REPORT_ONLY:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
BICACHE_REV=${BICACHE_REV:-}
BICACHE_BIN=${BICACHE_BIN:-}
DOC=${DOC:-$REPO/docs/BENCHMARKS.md}
PLOT=${PLOT:-$REPO/docs/bench-epochs.png}

# rclone: the cache holds the whole dataset; --vfs-fast-fingerprint because without it
# rclone 1.60 computes an MD5 of every local-backend file at open (reading it twice).
RCLONE_ARGS="--read-only --vfs-cache-mode full --vfs-fast-fingerprint --vfs-cache-max-size 20G \
--vfs-cache-max-age 24h"
BINDFS_ARGS="-r --multithreaded"
RAND_CONFIGS="4k:1 4k:4 128k:1 128k:4"

BIN=$BENCH_DIR/bin
DATA=$BENCH_DIR/data
MNT=$BENCH_DIR/mnt
CACHE=$BENCH_DIR/cache
OUT=$BENCH_DIR/results
FILES=$BENCH_DIR/imagenet.tsv
RESULTS=$OUT/results.jsonl

SLOWFS_PID=
RCLONE_PID=
BC_PID=
BC_PHASE=    # what the current bicache mount is used for (labels its peak RSS)
RUN=0
OWNER=0      # 1 once this invocation holds BENCH_DIR's lock (its mounts are then ours)




# Waits up to 10 s for a process of ours to exit, then SIGTERMs it (then SIGKILL).
reap() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid still alive; SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
        sleep 2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

fuse_unmount() {
    if is_mounted "$1"; then
        fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || umount -l "$1" || true
    fi
}

# ------------------------------------------------------------------------ the systems
bicache_up() { # bicache_up [extra mount args...]: fresh cache dir
    rm -rf "$CACHE/bicache"
    # shellcheck disable=SC2086
    "$BIN/bicache" mount "$MNT/slowfs" "$MNT/bicache" --cache-dir "$CACHE/bicache" \
        --ram "$RAM" --disk "$DISK" --log-file "$OUT/bicache-run$RUN.log" "$@" $EXTRA_MOUNT_ARGS 9>&-
    BC_PID=$("$BIN/bicache" stats "$MNT/bicache" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
}

bicache_down() { # bicache_down SYSTEM: records the daemon's VmHWM and last stats first
    if [ -n "$BC_PID" ] && [ -n "${1:-}" ] && [ -r "/proc/$BC_PID/status" ]; then
        "$BIN/bicache" stats "$MNT/bicache" --json >"$OUT/run$RUN-$1-$BC_PHASE.final.json" || true
        echo "$BC_PHASE $(awk '/^VmHWM:/ { print $2 }' "/proc/$BC_PID/status")" >>"$OUT/hwm-run$RUN-$1"
    fi
    if is_mounted "$MNT/bicache"; then
        "$BIN/bicache" unmount "$MNT/bicache" || umount -l "$MNT/bicache" || true
    fi
    reap "$BC_PID"
    BC_PID=
}

rclone_up() { # fresh cache dir
    rm -rf "$CACHE/rclone"
    mkdir -p "$CACHE/rclone"
    # shellcheck disable=SC2086
    rclone mount "$MNT/slowfs" "$MNT/rclone" $RCLONE_ARGS --cache-dir "$CACHE/rclone" \
        --config /dev/null --log-file "$OUT/rclone-run$RUN.log" $RCLONE_EXTRA_ARGS 9>&- &
    RCLONE_PID=$!
    wait_mounted "$MNT/rclone" || die "rclone did not mount (see $OUT/rclone-run$RUN.log)"
}

rclone_down() {
    fuse_unmount "$MNT/rclone"
    reap "$RCLONE_PID"
    RCLONE_PID=
}

slowfs_up() {
    "$BIN/slowfs" "$DATA" "$MNT/slowfs" --latency-ms "$LATENCY_MS" \
        --meta-latency-ms "$META_LATENCY_MS" --bandwidth-mbps "$BANDWIDTH_MBPS" \
        --threads "$SLOWFS_THREADS" --stats-file "$OUT/slowfs.json" 2>"$OUT/slowfs-run$RUN.log" 9>&- &
    SLOWFS_PID=$!
    wait_mounted "$MNT/slowfs" || die "slowfs did not mount (see $OUT/slowfs-run$RUN.log)"
}

slowfs_down() {
    if [ -n "$SLOWFS_PID" ]; then kill -TERM "$SLOWFS_PID" 2>/dev/null || true; fi
    reap "$SLOWFS_PID"
    SLOWFS_PID=
    if is_mounted "$MNT/slowfs"; then umount -l "$MNT/slowfs" || true; fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$OWNER" != 1 ]; then # failed before taking BENCH_DIR's lock: nothing here is ours
        exit "$rc"
    fi
    bicache_down ""
    rclone_down
    fuse_unmount "$MNT/bindfs"
    slowfs_down
    [ "$rc" -eq 0 ] || log "failed (exit $rc); everything unmounted.$([ -d "$OUT" ] && echo " Logs: $OUT")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sys_root() {
    case $1 in
    native) echo "$DATA" ;;
    bicache | bicache-imm) echo "$MNT/bicache" ;;
    *) echo "$MNT/$1" ;;
    esac
}
has_cache() { case $1 in rclone | bicache | bicache-imm) return 0 ;; *) return 1 ;; esac }
uses_source() { case $1 in native | bindfs) return 1 ;; *) return 0 ;; esac }
is_bicache() { case $1 in bicache | bicache-imm) return 0 ;; *) return 1 ;; esac }

sys_up() {
    case $1 in
    native | slowfs) ;;
    bindfs)
        # shellcheck disable=SC2086
        bindfs $BINDFS_ARGS "$DATA" "$MNT/bindfs" 9>&-
        wait_mounted "$MNT/bindfs" || die "bindfs did not mount"
        ;;
    rclone) rclone_up ;;
    bicache) bicache_up ;;
    bicache-imm) bicache_up --immutable ;;
    esac
}

sys_down() {
    case $1 in
    bindfs) fuse_unmount "$MNT/bindfs" ;;
    rclone) rclone_down ;;
    bicache | bicache-imm) bicache_down "$1" ;;
    esac
}

# Lets a cache system finish storing what the last pass fetched before a warm pass:
# bicache's SSD write-back queue drains (disk writes stop moving).
sys_settle() {
    is_bicache "$1" || return 0
    local prev= cur i
    for i in $(seq 1 240); do
        cur=$("$BIN/bicache" stats "$MNT/bicache" --json | python3 -c 'import json,sys; d=json.load(sys.stdin)["disk"]
print(d["writes"] + d.get("write_errors", 0) + d.get("writes_dropped", 0))')
        [ "$cur" = "$prev" ] && return 0
        prev=$cur
        sleep 0.25
    done
    log "bicache write-back still moving after 60 s"
}

# slowfs's counters: a copy written after this call (counts everything done before it);
# settled: once two consecutive copies agree (nothing still pulling from the source).
slowfs_snap() { python3 "$SCRIPTS/bench_work.py" snap "$OUT/slowfs.json" "$@"; }

# measure SYSTEM WORKLOAD CMD...: drops the page cache, runs CMD (which prints one JSON
# object), and appends a record with the source's and bicache's counters over the pass.
measure() {
    local sys=$1 wl=$2 tag="$OUT/run$RUN-$1-$2"
    shift 2
    if uses_source "$sys"; then slowfs_snap >"$tag.src0.json"; else echo null >"$tag.src0.json"; fi
    if is_bicache "$sys"; then "$BIN/bicache" stats "$MNT/bicache" --json >"$tag.bc0.json"; else echo null >"$tag.bc0.json"; fi
    drop_caches
    if ! "$@" >"$tag.out.json" 2>"$tag.err"; then
        cat "$tag.err" >&2
        die "$sys $wl failed"
    fi
    if uses_source "$sys"; then slowfs_snap --settled >"$tag.src1.json"; else echo null >"$tag.src1.json"; fi
    if is_bicache "$sys"; then "$BIN/bicache" stats "$MNT/bicache" --json >"$tag.bc1.json"; else echo null >"$tag.bc1.json"; fi
    python3 "$SCRIPTS/bench_report.py" --record "$RUN" "$sys" "$wl" "$tag" >>"$RESULTS"
}

# ------------------------------------------------------------------------ workloads
big_files() { # colon-separated, for fio --filename
    local root=$1 i list=
    for i in $(seq 0 $((BIG_FILES - 1))); do list+="${list:+:}$root/big/big$i.bin"; done
    echo "$list"
}

fio_json() { # fio_json NAME fio-args...: runs fio, prints the summary JSON
    local name=$1
    shift
    fio --output-format=json --output="$OUT/run$RUN-$name.fio.json" "$@" >/dev/null &&
        python3 "$SCRIPTS/bench_work.py" fio "$OUT/run$RUN-$name.fio.json"
}

fio_seq1() { # one reader, the big files one after the other
    fio_json "$1-seq1" --name=seq1 --readonly --rw=read --bs=1M --ioengine=psync \
        --filename="$(big_files "$2")" --file_service_type=sequential --group_reporting
}

fio_seq4() { # four readers, one big file each (BIG_FILES >= 4; extra files are not read)
    local args=() i
    for i in 0 1 2 3; do args+=(--name="seq4-$i" --filename="$2/big/big$i.bin"); done
    fio_json "$1-seq4" --readonly --rw=read --bs=1M --ioengine=psync --group_reporting "${args[@]}"
}

fio_rand() { # fio_rand TAG ROOT BS JOBS
    fio_json "$1-rand$3-$4" --name=rand --readonly --rw=randread --bs="$3" --ioengine=psync \
        --filename="$(big_files "$2")" --numjobs="$4" --time_based --runtime="$RAND_RUNTIME" \
        --group_reporting
}

epoch() { python3 "$SCRIPTS/bench_work.py" epoch "$1/imagenet" "$FILES" "$2" --workers "$WORKERS"; }
walk() { python3 "$SCRIPTS/bench_work.py" walk "$1/imagenet"; }
zarr_read() { python3 "$SCRIPTS/bench_work.py" zarr "$1/zarr/array.zarr" "$2" --workers "$WORKERS"; }

# One system's whole suite. Systems without a cache of their own (native, bindfs, slowfs)
# do every pass the same way (page cache dropped, nothing else to warm), so their "cold"
# pass stands for "warm" too (the report says so); their epochs are repeated (slowfs:
# SLOWFS_EPOCHS of them). Seeds depend on the run, not the system: in one run every
# system reads the same files in the same order.
wants() { case " $WORKLOADS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

run_system() {
    local sys=$1 root cfg bs nj e n
    root=$(sys_root "$sys")
    log "run $RUN: $sys"
    BC_PHASE=walk+epochs+zarr
    if [ "$sys" = bicache-imm ]; then BC_PHASE=walk+epochs; fi
    sys_up "$sys"
    if wants walk; then
        # The listing a job does before its first epoch, then the same walk again.
        measure "$sys" walk-cold walk "$root"
        if [ "$sys" != slowfs ]; then measure "$sys" walk-warm walk "$root"; fi
    fi
    if wants epoch; then
        n=$EPOCHS
        [ "$sys" != slowfs ] || n=$SLOWFS_EPOCHS
        for e in $(seq 1 "$n"); do
            measure "$sys" "epoch$e" epoch "$root" $((SEED + 1000 * RUN + e))
            sys_settle "$sys"
        done
    fi
    if [ "$sys" = bicache-imm ]; then
        sys_down "$sys"
        return 0
    fi
    if wants zarr; then
        measure "$sys" zarr-cold zarr_read "$root" $((SEED + 1000 * RUN + 11))
        if has_cache "$sys"; then
            sys_settle "$sys"
            measure "$sys" zarr-warm zarr_read "$root" $((SEED + 1000 * RUN + 12))
        fi
    fi
    if wants seq; then
        sys_down "$sys"
        BC_PHASE=seq1
        sys_up "$sys"
        measure "$sys" seq1-cold fio_seq1 "$sys" "$root"
        if has_cache "$sys"; then
            sys_settle "$sys"
            measure "$sys" seq1-warm fio_seq1 "$sys" "$root"
        fi
    fi
    sys_down "$sys"
    BC_PHASE=seq4+rand-warm
    sys_up "$sys"
    if wants seq; then
        measure "$sys" seq4-cold fio_seq4 "$sys" "$root"
        if has_cache "$sys"; then
            sys_settle "$sys"
            measure "$sys" seq4-warm fio_seq4 "$sys" "$root"
        fi
    elif wants rand && has_cache "$sys"; then
        # The warm random passes need the big files in the cache: read them once, untimed.
        fio_seq4 "$sys" "$root" >/dev/null
        sys_settle "$sys"
    fi
    if wants rand; then
        # Random reads over the big files, which a cache system now holds (warm).
        for cfg in $RAND_CONFIGS; do
            bs=${cfg%:*} nj=${cfg#*:}
            measure "$sys" "rand$bs-${nj}j-warm" fio_rand "$sys" "$root" "$bs" "$nj"
        done
        if has_cache "$sys" && [ "$RAND_COLD" = 1 ]; then
            for cfg in $RAND_CONFIGS; do
                bs=${cfg%:*} nj=${cfg#*:}
                sys_down "$sys"
                BC_PHASE=rand$bs-${nj}j-cold
                sys_up "$sys"
                measure "$sys" "rand$bs-${nj}j-cold" fio_rand "$sys" "$root" "$bs" "$nj"
            done
        fi
    fi
    sys_down "$sys"
}

# ---------------------------------------------------------------------------- checks
[ "$(id -u)" -eq 0 ] || die "must run as root (drop_caches, FUSE mounts)"
[ -e /dev/fuse ] || die "/dev/fuse missing"
for t in python3 fio bindfs rclone fusermount3; do command -v "$t" >/dev/null || die "$t missing"; done
python3 -c 'import numpy, zarr' || die "python3 needs numpy and zarr"
case "$BENCH_DIR" in *[[:space:]]*) die "BENCH_DIR must not contain spaces" ;; esac
[ "$RUNS" -ge 1 ] 2>/dev/null || die "RUNS must be >= 1"
[ "$BIG_FILES" -ge 4 ] 2>/dev/null || die "BIG_FILES must be >= 4 (fio seq4 reads four files)"
for s in $SYSTEMS; do
    case $s in native | bindfs | slowfs | rclone | bicache | bicache-imm) ;; *) die "unknown system $s" ;; esac
done
for w in $WORKLOADS; do
    case $w in walk | epoch | zarr | seq | rand) ;; *) die "unknown workload $w" ;; esac
done
MARKER=.bicache-bench2
if [ -d "$BENCH_DIR" ] && [ ! -e "$BENCH_DIR/$MARKER" ] && [ -n "$(ls -A "$BENCH_DIR")" ]; then
    die "BENCH_DIR=$BENCH_DIR is not empty and was not made by this script"
fi
mkdir -p "$BENCH_DIR"
touch "$BENCH_DIR/$MARKER"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd -P)
# One invocation per BENCH_DIR: a second one would delete this one's results mid-run.
exec 9>"$BENCH_DIR/.lock"
flock -n 9 || die "another scripts/bench.sh is using BENCH_DIR=$BENCH_DIR; wait for it or use another BENCH_DIR"
OWNER=1
if [ -z "$WRITE_DOC_GIVEN" ] && { [ "$SYSTEMS" != "native bindfs slowfs rclone bicache bicache-imm" ] ||
    [ "$WORKLOADS" != "walk epoch zarr seq rand" ]; }; then
    WRITE_DOC=0
    log "SYSTEMS or WORKLOADS is a subset: docs/BENCHMARKS.md is left alone (WRITE_DOC=1 to write it anyway)"
fi
BIN=$BENCH_DIR/bin DATA=$BENCH_DIR/data MNT=$BENCH_DIR/mnt CACHE=$BENCH_DIR/cache
OUT=$BENCH_DIR/results FILES=$BENCH_DIR/imagenet.tsv RESULTS=$OUT/results.jsonl

write_report() { # the markdown report and the plot from $OUT, and the doc if WRITE_DOC=1
    python3 "$SCRIPTS/bench_report.py" "$OUT" "$OUT/report.md" "$OUT/bench-epochs.png"
    if [ "$WRITE_DOC" = 1 ]; then
        write_doc_section "$DOC" "$OUT/report.md" bench-suite
        if [ -e "$OUT/bench-epochs.png" ]; then cp "$OUT/bench-epochs.png" "$PLOT"; fi
        log "wrote $DOC and $PLOT"
    fi
    log "raw results: $OUT (report: $OUT/report.md)"
}
if [ "$REPORT_ONLY" = 1 ]; then
    [ -s "$OUT/report.env" ] || die "REPORT_ONLY=1: no $OUT/report.env (a finished run's results)"
    # shellcheck disable=SC1091
    . "$OUT/report.env"
    [ -n "$WRITE_DOC_GIVEN" ] || WRITE_DOC=0
    write_report
    exit 0
fi
mkdir -p "$BIN" "$CACHE" "$MNT"/{slowfs,bindfs,rclone,bicache}
for m in bicache rclone bindfs slowfs; do # leftovers of an interrupted run (our own)
    if is_mounted "$MNT/$m"; then umount -l "$MNT/$m" || true; fi
done
rm -rf "$OUT" "$CACHE"/*
mkdir -p "$OUT"
: >"$RESULTS"

# ----------------------------------------------------------------------------- build
# Binaries are copied aside so a rebuild of the tree during the run cannot change them.
if [ -n "$BICACHE_BIN" ]; then
    [ -x "$BICACHE_BIN" ] || die "BICACHE_BIN=$BICACHE_BIN is not executable"
    install -m 0755 "$BICACHE_BIN" "$BIN/bicache"
    GIT_REV="prebuilt binary $BICACHE_BIN"
    [ "$SKIP_BUILD" = 1 ] || (cd "$REPO" && cargo build --release --example slowfs) >&2
    install -m 0755 "$REPO/target/release/examples/slowfs" "$BIN/slowfs"
elif [ -n "$BICACHE_REV" ]; then
    rev=$(cd "$REPO" && git rev-parse --verify "$BICACHE_REV^{commit}") || die "bad BICACHE_REV"
    log "building bicache and slowfs $rev from git (release)"
    rm -rf "$BENCH_DIR/src"
    mkdir -p "$BENCH_DIR/src"
    (cd "$REPO" && git archive "$rev") | tar -x -C "$BENCH_DIR/src"
    (cd "$BENCH_DIR/src" && CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --release --bin bicache --example slowfs) >&2
    install -m 0755 "$BENCH_DIR/target/release/bicache" "$BIN/bicache"
    install -m 0755 "$BENCH_DIR/target/release/examples/slowfs" "$BIN/slowfs"
    GIT_REV=$(cd "$REPO" && git rev-parse --short "$rev")
else
    [ "$SKIP_BUILD" = 1 ] || (cd "$REPO" && cargo build --release --bin bicache --example slowfs) >&2
    install -m 0755 "$REPO/target/release/bicache" "$BIN/bicache"
    install -m 0755 "$REPO/target/release/examples/slowfs" "$BIN/slowfs"
    GIT_REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(cd "$REPO" && git status --porcelain -- src examples Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        GIT_REV="$GIT_REV + uncommitted changes"
    fi
fi

# --------------------------------------------------------------------------- dataset
STAMP="seed=$SEED big=${BIG_FILES}x${BIG_MIB}MiB small=${SMALL_FILES}/${SMALL_DIRS}dirs/${SMALL_MIN_KIB}-${SMALL_MAX_KIB}KiB zarr=${ZARR_ROWS}/${ZARR_CHUNK_ROWS} v1"
if [ "$(cat "$BENCH_DIR/data.stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "generating the datasets ($STAMP) in $DATA"
    rm -rf "$DATA" "$BENCH_DIR/data.stamp"
    python3 "$SCRIPTS/bench_data.py" generate "$DATA" --seed "$SEED" --big-files "$BIG_FILES" \
        --big-mib "$BIG_MIB" --small-files "$SMALL_FILES" --small-dirs "$SMALL_DIRS" \
        --small-min-kib "$SMALL_MIN_KIB" --small-max-kib "$SMALL_MAX_KIB" \
        --zarr-rows "$ZARR_ROWS" --zarr-chunk-rows "$ZARR_CHUNK_ROWS"
    echo "$STAMP" >"$BENCH_DIR/data.stamp"
fi
python3 "$SCRIPTS/bench_data.py" list "$DATA/imagenet" >"$FILES"
log "datasets: $(du -sh --apparent-size "$DATA/big" "$DATA/imagenet" "$DATA/zarr" | awk '{ printf "%s %s  ", $2, $1 }')"

# ------------------------------------------------------------------------------ runs
START=$(date +%s)
for RUN in $(seq 1 "$RUNS"); do
    slowfs_up
    for s in $SYSTEMS; do run_system "$s"; done
    slowfs_down
    log "run $RUN done ($(($(date +%s) - START)) s so far)"
done
ELAPSED=$(($(date +%s) - START))

# -------------------------------------------------------------------------- report
MACHINE="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), \
$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), \
data and cache dirs on $(df -T "$BENCH_DIR" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
VERSIONS="$(fio --version), bindfs $(bindfs --version 2>&1 | awk '{ print $2; exit }'), \
$(rclone version 2>/dev/null | head -n 1), Python $(python3 -c 'import platform; print(platform.python_version())'), \
zarr $(python3 -c 'import zarr; print(zarr.__version__)')"
export MACHINE VERSIONS COMMAND_LINE GIT_REV ELAPSED RUNS SYSTEMS LATENCY_MS META_LATENCY_MS \
    BANDWIDTH_MBPS SLOWFS_THREADS RAM DISK EXTRA_MOUNT_ARGS RCLONE_ARGS RCLONE_EXTRA_ARGS \
    BINDFS_ARGS WORKERS EPOCHS SLOWFS_EPOCHS RAND_RUNTIME RAND_COLD SEED BIG_FILES BIG_MIB \
    SMALL_FILES SMALL_DIRS SMALL_MIN_KIB SMALL_MAX_KIB ZARR_ROWS ZARR_CHUNK_ROWS DATA
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
export BENCH_DATE
# Everything the report needs, so REPORT_ONLY=1 can rebuild it later from these results.
export -p | grep -E '^declare -x (MACHINE|VERSIONS|COMMAND_LINE|GIT_REV|ELAPSED|RUNS|SYSTEMS|LATENCY_MS|META_LATENCY_MS|BANDWIDTH_MBPS|SLOWFS_THREADS|RAM|DISK|EXTRA_MOUNT_ARGS|RCLONE_ARGS|RCLONE_EXTRA_ARGS|BINDFS_ARGS|WORKERS|EPOCHS|SLOWFS_EPOCHS|RAND_RUNTIME|RAND_COLD|SEED|BIG_FILES|BIG_MIB|SMALL_FILES|SMALL_DIRS|SMALL_MIN_KIB|SMALL_MAX_KIB|ZARR_ROWS|ZARR_CHUNK_ROWS|DATA|BENCH_DATE)=' >"$OUT/report.env"
write_report
