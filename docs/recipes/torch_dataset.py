#!/usr/bin/env python3
"""A PyTorch-style Dataset over one node's bicache shard (recipe of docs/SHARDING.md).

The node's mount was made with `--shard node` (one mount per node, shared by its local
ranks). `MOUNT/.bicache/shard.txt` lists the node's files, one relative path a line; each
local rank takes its own part of that list every epoch, so the ranks of a node together
read the node's shard once per epoch, in a new random order, all of it from the node's
cache from the second epoch on (from the first, after `bicache warm`).

Works with or without torch installed: `ShardDataset` subclasses torch.utils.data.Dataset
when torch can be imported, and otherwise has the same protocol (__len__, __getitem__),
so this file also runs, and is tested, with plain Python.

In a training script (torchrun sets LOCAL_RANK and LOCAL_WORLD_SIZE):

    from torch.utils.data import DataLoader, DistributedSampler
    ds = ShardDataset("/mnt/data", transform=decode_sample)
    sampler = DistributedSampler(ds, num_replicas=local_world_size, rank=local_rank,
                                 shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=8)
    steps = steps_per_epoch(len(ds) // local_world_size // 64)   # equal on every rank
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for step, batch in zip(range(steps), loader):
            ...

Note `num_replicas=local_world_size, rank=local_rank`: the sampler splits the node's
shard among the node's ranks, not the whole dataset among all ranks. Shards are balanced
by bytes, not by file count, so nodes can have a few files more or less; DDP needs every
rank to take the same number of steps, hence `steps_per_epoch` (the minimum over ranks).

Run as a script it is the demo and self-test of the recipe:

    python3 torch_dataset.py MOUNT [--epochs N] [--batch-size B] [--record FILE]

reads this local rank's part of the shard for N epochs (LOCAL_RANK / LOCAL_WORLD_SIZE from
the environment, default 0 / 1), through torch's DataLoader when torch is installed and a
plain loop otherwise, checks every sample's size against the file's, and prints what it
read. --record appends the relative paths read in the first epoch to FILE.
"""
import argparse
import os
import random
import sys

try:  # Optional: the class is a real torch Dataset when torch is there.
    import torch
    from torch.utils.data import Dataset as _Base
except ImportError:  # pragma: no cover - depends on the machine
    torch = None
    _Base = object

SHARD_LIST = os.path.join(".bicache", "shard.txt")


def read_shard_list(mountpoint):
    """The mount's shard, as relative paths in the plan's (seeded) order.

    `.bicache/shard.txt` is a control file: it opens by name but is not listed by readdir,
    so dataset walkers never see it. File names are bytes on Linux; os.fsdecode keeps any
    name (surrogate escapes), and os.fsencode gives the same bytes back.
    """
    with open(os.path.join(mountpoint, SHARD_LIST), "rb") as f:
        return [os.fsdecode(line) for line in f.read().split(b"\n") if line]


def default_load(path):
    with open(path, "rb") as f:
        return f.read()


class ShardDataset(_Base):
    """Samples = the files of this mount's shard; item i = transform(load(path_i)).

    `load` reads the file (bytes by default); `transform` turns the bytes into a sample
    (decode an image, parse a record...). Both run in DataLoader worker processes, so they
    must be picklable (module-level functions). The list is read once, at construction.
    """

    def __init__(self, mountpoint, transform=None, load=default_load, files=None):
        self.mountpoint = mountpoint
        self.files = list(files) if files is not None else read_shard_list(mountpoint)
        self.transform = transform
        self.load = load

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        data = self.load(os.path.join(self.mountpoint, self.files[i]))
        return self.transform(data) if self.transform else data


def local_indices(n, local_rank, local_world_size, epoch, seed=0):
    """What DistributedSampler(shuffle=True, drop_last=True) gives one rank, in plain Python:
    a new seeded permutation every epoch, dealt out round-robin, every rank the same count."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_rank = n // local_world_size
    return order[local_rank : per_rank * local_world_size : local_world_size]


def steps_per_epoch(local_steps):
    """The number of steps every rank can take: the minimum over all ranks (all nodes).
    Without torch.distributed initialised (or without torch) it is `local_steps`."""
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([local_steps], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t.item())
    return local_steps


def _identity(batch):
    return batch


def _load_with_path(path):
    return path, default_load(path)


def main():
    p = argparse.ArgumentParser(description="Read this rank's part of a bicache shard.")
    p.add_argument("mountpoint")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", help="append the paths read in epoch 1 to this file")
    a = p.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    ds = ShardDataset(a.mountpoint, load=_load_with_path)
    counts = set()
    for epoch in range(a.epochs):
        if torch is not None:
            from torch.utils.data import DataLoader, DistributedSampler

            sampler = DistributedSampler(ds, num_replicas=local_world, rank=local_rank,
                                         shuffle=True, seed=a.seed, drop_last=True)
            sampler.set_epoch(epoch)
            batches = DataLoader(ds, batch_size=a.batch_size, sampler=sampler,
                                 collate_fn=_identity)
        else:
            idx = local_indices(len(ds), local_rank, local_world, epoch, a.seed)
            batches = ([ds[i] for i in idx[j : j + a.batch_size]]
                       for j in range(0, len(idx), a.batch_size))
        n = nbytes = 0
        seen = []
        for batch in batches:
            for path, data in batch:
                want = os.path.getsize(path)
                if len(data) != want:
                    sys.exit(f"{path}: read {len(data)} bytes, the file has {want}")
                n += 1
                nbytes += len(data)
                seen.append(os.path.relpath(path, a.mountpoint))
        counts.add(n)
        if epoch == 0 and a.record:
            with open(a.record, "a") as f:
                f.write("".join(s + "\n" for s in seen))
        print(f"rank {local_rank}/{local_world} epoch {epoch + 1}: {n} samples, "
              f"{nbytes} bytes ({'torch DataLoader' if torch else 'plain Python'})")
    if len(counts) != 1:  # every epoch: the same number of samples (drop_last)
        sys.exit(f"epochs read different numbers of samples: {sorted(counts)}")


if __name__ == "__main__":
    main()
