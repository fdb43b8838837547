"""--cache: copy the shards to the RAM disk (/dev/shm) once per node before training, when
they fit, and say why not when they do not."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from train.config import Derived
from train.logs import say
from train.shards import Shards

RAM_DISK = Path("/dev/shm")


def cache_shards(shards: Shards, d: Derived) -> tuple[Shards, Path | None]:
    """Copy the shards to /dev/shm when they fit; (the shards to read, copy to delete at
    exit)."""
    source = shards.folder
    files = [f for f in shards.files() if (source / f).exists()]
    size = sum((source / f).stat().st_size for f in files)
    if not RAM_DISK.is_dir():
        say(d, f"--cache: no RAM disk at {RAM_DISK}; reading {source} directly")
        return shards, None
    free = shutil.disk_usage(RAM_DISK).free
    if size * 1.05 > free:
        say(
            d,
            f"--cache: the shards need {size / 1e9:.1f} GB but {RAM_DISK} has "
            f"{free / 1e9:.1f} GB free; reading {source} directly",
        )
        return shards, None
    # The same name on every rank of a node (hash() is salted per process; sha1 is not), and
    # another for each node (torchrun's GROUP_RANK): two "nodes" sharing a host (tests, or
    # two jobs' nodes on one machine) must not write, read and remove the same copy.
    source_id = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    node = os.environ.get("GROUP_RANK", "0")
    target = RAM_DISK / f"imagenet-shards-{os.getuid()}-{source_id}-node{node}"
    if d.world_size > 1:
        dist.barrier()  # every rank has measured the free space before any copying starts
    if d.local_rank == 0:
        target.mkdir(exist_ok=True)
        for name in tqdm(files, desc="cache", unit="file", disable=d.rank != 0):
            src, dst = source / name, target / name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, dst)
    if d.world_size > 1:
        dist.barrier()
    say(d, f"--cache: {size / 1e9:.1f} GB of shards copied to {target}")
    return shards.moved_to(target), target if d.local_rank == 0 else None
