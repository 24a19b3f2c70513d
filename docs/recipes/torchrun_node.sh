#!/usr/bin/env bash
# torchrun recipe of docs/SHARDING.md: one bicache mount per node in `node` mode, shared by
# the node's ranks; warm it; run torchrun; unmount when training ends (or fails).
#
# Run it once on every node (by ssh, pdsh, your scheduler...), same SOURCE and SEED everywhere:
#
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=node0 NPROC_PER_NODE=8 \
#       docs/recipes/torchrun_node.sh /shared/datasets/imagenet train.py --epochs 90
#
# The training script finds the node's mount in $DATA_DIR and its shard in
# $DATA_DIR/.bicache/shard.txt (see torch_dataset.py next to this file).
#
# Why --shard-index/--shard-count here and not `--shard node` alone: the mount has to exist
# before torchrun starts, and torchrun's variables (GROUP_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE)
# only exist inside the worker processes it starts. The node rank and node count this script
# is given are the same numbers, so the shards are the same. `--shard node` alone is for a
# mount made from inside a torchrun worker, or under srun (Slurm variables): see the doc.
#
# Environment: NNODES, NODE_RANK (required); NPROC_PER_NODE (1), MASTER_ADDR (127.0.0.1),
# MASTER_PORT (29500), MNT (/mnt/bicache-data), CACHE_DIR (/local/bicache: local SSD),
# RAM (25%), DISK (50%), SEED (0), WARM (1: wait for the shard prefetch before training),
# BICACHE_ARGS (more mount options, e.g. "--always-visible classes.json"; the same on every
# node), BICACHE (bicache binary; default: on PATH), TORCHRUN (torchrun; default: torchrun).
set -euo pipefail

[ $# -ge 2 ] || {
    echo "usage: NNODES=N NODE_RANK=R $0 SOURCE TRAINING_SCRIPT [ARGS...]" >&2
    exit 2
}
SOURCE=$1
shift
: "${NNODES:?set NNODES (number of nodes)}" "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
MNT=${MNT:-/mnt/bicache-data}
CACHE_DIR=${CACHE_DIR:-/local/bicache}
RAM=${RAM:-25%}
DISK=${DISK:-50%}
SEED=${SEED:-0}
WARM=${WARM:-1}
BICACHE_ARGS=${BICACHE_ARGS:-}
BICACHE=${BICACHE:-bicache}
TORCHRUN=${TORCHRUN:-torchrun}

mkdir -p "$MNT"
# shellcheck disable=SC2086 # BICACHE_ARGS is a list of words
"$BICACHE" mount "$SOURCE" "$MNT" --cache-dir "$CACHE_DIR" --ram "$RAM" --disk "$DISK" \
    --shard node --shard-index "$NODE_RANK" --shard-count "$NNODES" --seed "$SEED" $BICACHE_ARGS
trap '"$BICACHE" unmount "$MNT"' EXIT
echo "node $NODE_RANK/$NNODES: $(wc -l <"$MNT/.bicache/shard.txt") files in this node's shard at $MNT"

# Optional: training then starts on a warm cache (epoch 1 is as fast as the next ones).
# Without it the prefetch runs alongside epoch 1 and yields to the readers' own misses.
if [ "$WARM" = 1 ]; then "$BICACHE" warm "$MNT"; fi

# Not exec: the trap must unmount when torchrun ends.
DATA_DIR=$MNT "$TORCHRUN" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --nproc-per-node "$NPROC_PER_NODE" --master-addr "$MASTER_ADDR" \
    --master-port "$MASTER_PORT" "$@"
