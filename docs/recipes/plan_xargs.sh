#!/usr/bin/env bash
# `bicache plan | xargs` recipe of docs/SHARDING.md: distributed data processing with any
# tool, no mount needed. Worker I of K processes the files of shard I; K workers (on K
# machines, or K Slurm tasks, or K array jobs) together process every file exactly once,
# with no coordination: each computes the same partition from the same file list and seed.
#
#   docs/recipes/plan_xargs.sh SOURCE OUT_DIR I K
#
# Here the "processing" is a SHA-256 of every file, written to OUT_DIR/shard-I.sha256
# (replace the sh -c body with your own tool: resize images, tokenize text...). 4 files at
# a time. Paths travel NUL-terminated (plan --null, xargs -0), and the sh -c body gets the
# path as "$1", never pasted into the command: any file name is safe, a newline too.
# Under Slurm the shard comes from the environment instead: `bicache plan SOURCE --shard rank`
# (SLURM_PROCID / SLURM_NTASKS). BICACHE: the binary (default: bicache on PATH).
set -euo pipefail
[ $# -eq 4 ] || {
    echo "usage: $0 SOURCE OUT_DIR SHARD_INDEX SHARD_COUNT" >&2
    exit 2
}
SOURCE=$1 OUT=$2 I=$3 K=$4
BICACHE=${BICACHE:-bicache}
mkdir -p "$OUT"
export SOURCE

"$BICACHE" plan "$SOURCE" --shard-index "$I" --shard-count "$K" --seed 0 --null |
    xargs -0 -P 4 -I{} sh -c 'cd "$SOURCE" && sha256sum -- "$1"' sh {} \
        >"$OUT/shard-$I.sha256.tmp"
sort -k2 "$OUT/shard-$I.sha256.tmp" >"$OUT/shard-$I.sha256"
rm "$OUT/shard-$I.sha256.tmp"
echo "shard $I/$K: $(wc -l <"$OUT/shard-$I.sha256") files -> $OUT/shard-$I.sha256"
