#!/usr/bin/env bash
# bicache in under a minute: makes a small dataset (or takes yours), serves it through a
# simulated slow shared filesystem (slowfs: 1 ms per request, 40 MB/s), mounts bicache on
# top, reads everything twice and prints per pass the time, MB/s, files/s, and what the
# cache did (hit rates, bytes pulled from the slow source). The first pass is bound by the
# slow source; the second comes from bicache's RAM tier at local speed. Everything is
# unmounted at the end, on failure and on Ctrl-C.
#
#   bash scripts/demo.sh [DATASET_DIR]
#
# DATASET_DIR: read your own directory instead of a generated one (~64 MB, 320 files);
# it is only read. Environment knobs: LATENCY_MS (1) and BANDWIDTH_MBPS (40) of the slow
# source, SLOW=0 to mount bicache straight on DATASET_DIR (when it already is on a slow
# filesystem), RAM and DISK budgets (default: bicache's own). Binaries come from
# $CARGO_TARGET_DIR/release (default target/release), built first if missing or older than
# the sources (BUILD=0: use them as they are; BUILD=1: always run cargo build). Needs FUSE 3 (fusermount3) and /dev/fuse; as root the page cache is
# dropped between the passes, so the second pass really goes through bicache.
set -euo pipefail

SRC=${1:-}
if [[ -n $SRC ]]; then
    [[ -d $SRC ]] || { echo "demo: $SRC is not a directory" >&2; exit 2; }
    SRC=$(cd "$SRC" && pwd)   # before the cd below
fi
cd "$(dirname "$0")/.."
LATENCY_MS=${LATENCY_MS:-1}
BANDWIDTH_MBPS=${BANDWIDTH_MBPS:-40}
SLOW=${SLOW:-1}
# bicache's own defaults (25% of free RAM, 50% of the cache disk) unless RAM / DISK are set.
BUDGETS=()
[[ -n ${RAM:-} ]] && BUDGETS+=(--ram "$RAM")
[[ -n ${DISK:-} ]] && BUDGETS+=(--disk "$DISK")

# --- 1. build (or reuse what is built) ----------------------------------------------
OUT=${CARGO_TARGET_DIR:-$PWD/target}/release
BIN=$OUT/bicache
SLOWFS=$OUT/examples/slowfs
stale() { [[ ! -x $1 ]] || [[ -n $(find src examples Cargo.toml Cargo.lock -newer "$1" -print -quit) ]]; }
if [[ ${BUILD:-auto} == 1 ]] || { [[ ${BUILD:-auto} != 0 ]] && { stale "$BIN" || stale "$SLOWFS"; }; }; then
    echo "building bicache and the slowfs example (cargo build --release; first time: a few minutes)"
    cargo build --release --quiet --bin bicache --example slowfs
else
    echo "using the built $BIN"
fi

# --- 2. scratch space, and the clean-up that always runs ----------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bicache-demo.XXXXXX")
SLOWMNT=$WORK/slow   # the "shared filesystem": slowfs over the dataset
MNT=$WORK/mnt        # bicache over that
mkdir -p "$SLOWMNT" "$MNT"
SLOWFS_PID=
mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if mounted "$MNT"; then
        "$BIN" unmount "$MNT" || fusermount3 -uz "$MNT" || umount -l "$MNT" || true
    fi
    if [[ -n $SLOWFS_PID ]]; then
        kill -TERM "$SLOWFS_PID" 2>/dev/null || true
        wait "$SLOWFS_PID" 2>/dev/null || true
    fi
    if mounted "$SLOWMNT"; then fusermount3 -uz "$SLOWMNT" || umount -l "$SLOWMNT" || true; fi
    # Never delete through a mount that is still there.
    if awk -v w="$WORK/" 'index($5, w) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        echo "demo: something is still mounted under $WORK; left in place" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, unmounting"; exit 130' INT TERM

# --- 3. the dataset -----------------------------------------------------------------
if [[ -z $SRC ]]; then
    SRC=$WORK/dataset
    echo "making a demo dataset in $SRC: 4 classes x 80 images of 8-392 KiB"
    for class in cat dog bird fish; do
        mkdir -p "$SRC/train/$class"
        for i in $(seq 1 80); do
            head -c $((8192 + (i * 7919 + ${#class} * 104729) % 393216)) /dev/urandom \
                >"$SRC/train/$class/img_$i.jpg"
        done
    done
fi
files=$(find "$SRC" -type f | wc -l)

# --- 4. the slow source, then bicache on top ----------------------------------------
if [[ $SLOW == 0 ]]; then
    UNDER=$SRC
    SOURCE_NAME="the source"
else
    SOURCE_NAME="the slow source"
    # In its own session, so that Ctrl-C reaches the readers, not the source under bicache
    # (the clean-up stops it, after bicache).
    setsid "$SLOWFS" "$SRC" "$SLOWMNT" --latency-ms "$LATENCY_MS" \
        --bandwidth-mbps "$BANDWIDTH_MBPS" >"$WORK/slowfs.log" 2>&1 &
    SLOWFS_PID=$!
    for _ in $(seq 100); do
        mounted "$SLOWMNT" && break
        kill -0 "$SLOWFS_PID" 2>/dev/null || { cat "$WORK/slowfs.log" >&2; exit 1; }
        sleep 0.1
    done
    mounted "$SLOWMNT" || { echo "demo: slowfs did not mount" >&2; exit 1; }
    echo "slow source: $SRC served by slowfs at $SLOWMNT ($LATENCY_MS ms per request, $BANDWIDTH_MBPS MB/s)"
    UNDER=$SLOWMNT
fi
"$BIN" mount "$UNDER" "$MNT" --cache-dir "$WORK/cache" "${BUDGETS[@]}"
echo "bicache:     $UNDER mounted at $MNT (RAM ${RAM:-25%}, SSD ${DISK:-50%} in $WORK/cache)"
echo "             (in another terminal: $BIN stats --watch $MNT)"

# --- 5. read everything twice -------------------------------------------------------
# One counter of stats.json (one line; its objects hold no nested ones): get OBJECT KEY.
STATS=
get() { sed -E "s/.*\"$1\":\\{[^}]*\"$2\":([0-9]+).*/\\1/" <<<"$STATS"; }
counters() {
    STATS=$("$BIN" stats "$MNT" --json)
    echo "$(get source bytes) $(get source reads) $(get ram hits) $(get ram misses) $(get disk hits) $(get disk misses)"
}
drop_page_cache() {
    if [[ $(id -u) == 0 ]]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
    else
        echo "    (not root: the page cache is not dropped, the kernel may serve this pass itself)"
    fi
}

echo
for pass in 1 2; do
    drop_page_cache
    read -r sb0 sr0 rh0 rm0 dh0 dm0 <<<"$(counters)"
    start=$(date +%s.%N)
    bytes=$(find "$MNT" -type f -print0 | xargs -0 -r cat | wc -c)
    end=$(date +%s.%N)
    read -r sb1 sr1 rh1 rm1 dh1 dm1 <<<"$(counters)"
    [[ $pass == 1 ]] && label="cold: from $SOURCE_NAME" || label="warm: from bicache's cache"
    awk -v p="$pass" -v l="$label" -v src="$SOURCE_NAME" -v f="$files" -v b="$bytes" \
        -v s="$start" -v e="$end" -v sb=$((sb1 - sb0)) -v sr=$((sr1 - sr0)) -v rh=$((rh1 - rh0)) -v rm=$((rm1 - rm0)) \
        -v dh=$((dh1 - dh0)) -v dm=$((dm1 - dm0)) '
        function rate(h, m) { return h + m ? sprintf("%.1f%%", 100 * h / (h + m)) : "-" }
        BEGIN {
            t = e - s; if (t <= 0) t = 1e-6
            printf "pass %d (%s): %d files, %.1f MB in %.2f s = %.1f MB/s, %.0f files/s\n",
                p, l, f, b / 1e6, t, b / 1e6 / t, f / t
            printf "    from the cache: %.1f%% of the bytes; from %s: %.1f MB in %d reads\n",
                b ? 100 * (1 - sb / b) : 0, src, sb / 1e6, sr
            printf "    chunk look-ups: RAM hits %s of %d, SSD hits %s of %d (the RAM misses)\n",
                rate(rh, rm), rh + rm, rate(dh, dm), dh + dm
        }'
done

echo
echo "bicache stats $MNT:"
"$BIN" stats "$MNT" | sed 's/^/    /'
echo
echo "unmounting"
