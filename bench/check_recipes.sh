#!/usr/bin/env bash
# Runs the recipes of docs/SHARDING.md (docs/recipes/) that can run on one machine, against
# a small generated tree, and checks what they did:
#   - plan_xargs.sh, 3 workers: every file processed exactly once, hashes equal the source's;
#   - `bicache plan --shard node` with torchrun's and Slurm's variables gives the same shard
#     as the explicit flags, and the same list as a mount's .bicache/shard.txt;
#   - torchrun_node.sh on two "nodes" at once (two mounts of one dataset on this machine,
#     2 ranks each) with a stand-in for torchrun (torch is not needed) that starts the ranks
#     with torchrun's variables, running torch_dataset.py (through torch's DataLoader when
#     torch is installed, plain Python otherwise): the ranks read disjoint parts of their
#     node's shard, the shards cover the dataset, and the mounts are gone afterwards;
#   - zarr_four_mounts.sh (with tests/fixtures/zarr_shards.py and zarr_shard_blocks.py);
#     skipped without numpy and zarr<3, except under CI=true where that fails.
# slurm_train.sbatch needs a Slurm cluster and is not run.
# Needs /dev/fuse access (root, or a user allowed to mount FUSE), python3, sha256sum.
# Prints "all recipes ok" and exits 0 when every check passed; nothing stays mounted.
#
#   bash bench/check_recipes.sh
#   BICACHE=/path/to/bicache bash bench/check_recipes.sh     (a Rust test passes its
#                                                             CARGO_BIN_EXE_bicache)
# BICACHE: the binary; default $CARGO_TARGET_DIR/release/bicache (else target/release),
# built with cargo if missing.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$REPO/docs/recipes
if [ -z "${BICACHE:-}" ]; then
    BICACHE=${CARGO_TARGET_DIR:-$REPO/target}/release/bicache
    [ -x "$BICACHE" ] || (cd "$REPO" && cargo build --release --bin bicache)
fi
BICACHE=$(cd "$(dirname "$BICACHE")" && pwd)/$(basename "$BICACHE")
export BICACHE
WORK=$(mktemp -d /tmp/bicache-recipes.XXXXXX)
cleanup() {
    local m
    # Only our own mounts, if a recipe failed half-way.
    for m in $(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo); do
        "$BICACHE" unmount "$m" || umount -l "$m" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n=== %s\n' "$*"; }

# A small image-classification-like dataset: 3 classes x 40 files of 4-60 KiB, plus a
# metadata file every reader needs.
SRC=$WORK/dataset
python3 - "$SRC" <<'PY'
import os, random, sys
rng = random.Random(7)
for c in ("cat", "dog", "bird"):
    os.makedirs(os.path.join(sys.argv[1], "train", c))
    for i in range(40):
        with open(os.path.join(sys.argv[1], "train", c, f"{c}{i:03d}.jpg"), "wb") as f:
            f.write(rng.randbytes(rng.randint(4096, 61440)))
with open(os.path.join(sys.argv[1], "classes.json"), "w") as f:
    f.write('["cat", "dog", "bird"]\n')
PY
(cd "$SRC" && find . -type f | sed 's|^\./||' | sort) >"$WORK/all.txt"
echo "dataset: $(wc -l <"$WORK/all.txt") files in $SRC"

step "plan | xargs: 3 workers"
for i in 0 1 2; do
    "$HERE/plan_xargs.sh" "$SRC" "$WORK/hashes" "$i" 3
done
cat "$WORK"/hashes/shard-*.sha256 | sort -k2 >"$WORK/hashes.all"
(cd "$SRC" && sha256sum -- $(cat "$WORK/all.txt")) | sort -k2 >"$WORK/hashes.want"
diff "$WORK/hashes.all" "$WORK/hashes.want"
echo "ok: every file hashed exactly once, hashes equal the source's"

step "launcher environment -> shard"
flags=$("$BICACHE" plan "$SRC" --shard-index 1 --shard-count 2 2>/dev/null)
torch=$(GROUP_RANK=1 WORLD_SIZE=4 LOCAL_WORLD_SIZE=2 "$BICACHE" plan "$SRC" --shard node 2>&1 >/dev/null)
echo "torchrun: $torch"
[ "$(GROUP_RANK=1 WORLD_SIZE=4 LOCAL_WORLD_SIZE=2 "$BICACHE" plan "$SRC" --shard node 2>/dev/null)" = "$flags" ]
slurm=$(SLURM_NODEID=1 SLURM_NNODES=2 "$BICACHE" plan "$SRC" --shard node 2>&1 >/dev/null)
echo "Slurm:    $slurm"
[ "$(SLURM_NODEID=1 SLURM_NNODES=2 "$BICACHE" plan "$SRC" --shard node 2>/dev/null)" = "$flags" ]
echo "ok: both give the shard of --shard-index 1 --shard-count 2"

step "torchrun_node.sh: 2 nodes x 2 ranks, stand-in torchrun, torch_dataset.py"
# What torchrun does for the recipe: start --nproc-per-node ranks with its variables.
cat >"$WORK/torchrun" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
while [ $# -gt 0 ]; do
    case "$1" in
    --nnodes) NNODES=$2; shift 2 ;;
    --node-rank) NODE_RANK=$2; shift 2 ;;
    --nproc-per-node) NPROC=$2; shift 2 ;;
    --master-addr | --master-port) shift 2 ;;
    *) break ;;
    esac
done
pids=()
for ((l = 0; l < NPROC; l++)); do
    RANK=$((NODE_RANK * NPROC + l)) LOCAL_RANK=$l WORLD_SIZE=$((NNODES * NPROC)) \
        LOCAL_WORLD_SIZE=$NPROC GROUP_RANK=$NODE_RANK python3 "$@" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
SH
chmod +x "$WORK/torchrun"
pids=()
for n in 0 1; do
    # The training script records what it read, then copies the node's shard list (the
    # mount is gone once the launcher returns).
    NNODES=2 NODE_RANK=$n NPROC_PER_NODE=2 MNT=$WORK/node$n/mnt CACHE_DIR=$WORK/node$n/cache \
        RAM=64MiB DISK=256MiB TORCHRUN=$WORK/torchrun BICACHE_ARGS="--always-visible classes.json" \
        "$HERE/torchrun_node.sh" "$SRC" "$HERE/torch_dataset.py" "$WORK/node$n/mnt" \
        --epochs 2 --record "$WORK/node$n/read.txt" >"$WORK/node$n.log" 2>&1 &
    pids+=($!)
done
# Copy each node's shard list while it is mounted (the launcher unmounts at the end).
for n in 0 1; do
    for i in $(seq 1 100); do
        [ -e "$WORK/node$n/mnt/.bicache/shard.txt" ] && break
        sleep 0.1
    done
    cp "$WORK/node$n/mnt/.bicache/shard.txt" "$WORK/shard$n.txt"
done
failed=0
for n in 0 1; do
    wait "${pids[$n]}" || failed=1
    cat "$WORK/node$n.log"
done
[ "$failed" = 0 ] || exit 1
python3 - "$WORK" <<'PY'
import os, sys
w = sys.argv[1]
every = {l.rstrip("\n") for l in open(os.path.join(w, "all.txt"))}
shards = [[l.rstrip("\n") for l in open(os.path.join(w, f"shard{n}.txt"))] for n in (0, 1)]
s0, s1 = set(shards[0]), set(shards[1])
assert not s0 & s1, "shards overlap"
visible = every - s0 - s1
assert visible == {"classes.json"}, f"not in any shard: {visible}"  # --always-visible
for n, shard in enumerate(shards):
    read = [l.rstrip("\n") for l in open(os.path.join(w, f"node{n}", "read.txt"))]
    assert len(read) == len(set(read)), f"node {n}: a file was read twice in one epoch"
    assert set(read) <= set(shard), f"node {n}: read files outside its shard"
    assert len(read) == len(shard) // 2 * 2, f"node {n}: read {len(read)} of {len(shard)}"
    print(f"node {n}: shard of {len(shard)} files, its 2 ranks read {len(read)} distinct files")
print("ok: disjoint shards covering the dataset, each read once per epoch by its node's ranks")
PY
for n in 0 1; do
    # `bicache plan` with the mount's sharding options prints the mount's shard.txt.
    "$BICACHE" plan "$SRC" --shard-index "$n" --shard-count 2 --always-visible classes.json \
        2>/dev/null | cmp - "$WORK/shard$n.txt"
done
echo "ok: bicache plan with the same options lists each mount's shard.txt, in the same order"
if awk -v w="$WORK/" 'index($5, w) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
    echo "a mount was left behind" >&2
    exit 1
fi
echo "ok: both launchers unmounted"

step "zarr: four restricted mounts"
if python3 -c 'import numpy, zarr; assert zarr.__version__.startswith("2")' 2>/dev/null; then
    "$HERE/zarr_four_mounts.sh"
elif [ "${CI:-}" = true ]; then
    echo "python3 lacks numpy and zarr<3, required under CI=true (pip install 'zarr<3' numpy)" >&2
    exit 1
else
    echo "SKIPPED: python3 lacks numpy and zarr<3"
fi
printf '\nall recipes ok\n'
