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

RAM_DISK = Path("/dev/shm")


def shard_files(manifest: dict) -> list[str]:
    """Every file of a shards folder that training reads, as names relative to it."""
    return ["manifest.json", "classes.txt"] + [
        name
        for info in manifest["splits"].values()
        for s in info["shards"]
        for name in (s["tar"], s["index"])
    ]


def cache_shards(data_dir: str, d: Derived, manifest: dict) -> tuple[str, Path | None]:
    """Copy the shards to /dev/shm when they fit; (folder to read, copy to delete at exit)."""
    files = shard_files(manifest)
    size = sum((Path(data_dir) / f).stat().st_size for f in files if (Path(data_dir) / f).exists())
    if not RAM_DISK.is_dir():
        say(d, f"--cache: no RAM disk at {RAM_DISK}; reading {data_dir} directly")
        return data_dir, None
    free = shutil.disk_usage(RAM_DISK).free
    if size * 1.05 > free:
        say(
            d,
            f"--cache: the shards need {size / 1e9:.1f} GB but {RAM_DISK} has "
            f"{free / 1e9:.1f} GB free; reading {data_dir} directly",
        )
        return data_dir, None
    # The same name on every rank of a node (hash() is salted per process; sha1 is not), and
    # another for each node (torchrun's GROUP_RANK): two "nodes" sharing a host (tests, or
    # two jobs' nodes on one machine) must not write, read and remove the same copy.
    source_id = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    node = os.environ.get("GROUP_RANK", "0")
    target = RAM_DISK / f"imagenet-shards-{os.getuid()}-{source_id}-node{node}"
    if d.world_size > 1:
        dist.barrier()  # every rank has measured the free space before any copying starts
    if d.local_rank == 0:
        target.mkdir(exist_ok=True)
        for name in tqdm(files, desc="cache", unit="file", disable=d.rank != 0):
            src, dst = Path(data_dir) / name, target / name
            if src.exists() and (not dst.exists() or dst.stat().st_size != src.stat().st_size):
                shutil.copyfile(src, dst)
    if d.world_size > 1:
        dist.barrier()
    say(d, f"--cache: {size / 1e9:.1f} GB of shards copied to {target}")
    return str(target), target if d.local_rank == 0 else None
