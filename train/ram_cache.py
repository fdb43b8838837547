"""--cache: copy the shards to the RAM disk (/dev/shm) once per node before training, when
they fit, and say why not when they do not; the copy outlives torchrun's restarts of the job
and goes when the run ends."""

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


def cache_folder(source: Path) -> Path:
    """The copy's folder: the same name on every rank of a node (hash() is salted per
    process; sha1 is not), and another for each node (torchrun's GROUP_RANK): two "nodes"
    sharing a host (tests, or two jobs' nodes on one machine) must not write, read and
    remove the same copy. A restart of the job finds its node's copy there."""
    source_id = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    node = os.environ.get("GROUP_RANK", "0")
    return RAM_DISK / f"imagenet-shards-{os.getuid()}-{source_id}-node{node}"


def copied_bytes(source: Path, target: Path, files: list[str]) -> int:
    """The bytes of the files already in the copy whole (a restart's, or a killed copy's)."""
    return sum(
        (target / f).stat().st_size
        for f in files
        if (target / f).is_file() and (target / f).stat().st_size == (source / f).stat().st_size
    )


def cache_shards(shards: Shards, d: Derived) -> tuple[Shards, Path | None]:
    """Copy the shards to /dev/shm when they fit, what an earlier attempt of the job copied
    kept; (the shards to read, the copy to remove when the run ends)."""
    source = shards.folder
    files = [f for f in shards.files() if (source / f).exists()]
    size = sum((source / f).stat().st_size for f in files)
    if not RAM_DISK.is_dir():
        say(d, f"--cache: no RAM disk at {RAM_DISK}; reading {source} directly")
        return shards, None
    target = cache_folder(source)
    free = shutil.disk_usage(RAM_DISK).free
    if (size - copied_bytes(source, target, files)) * 1.05 > free:
        say(
            d,
            f"--cache: the shards need {size / 1e9:.1f} GB but {RAM_DISK} has "
            f"{free / 1e9:.1f} GB free; reading {source} directly",
        )
        return shards, None
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


def restart_follows(code: int | None) -> bool:
    """Whether torchrun restarts the group after this exit (a failure, restarts left): the
    node's copy then stays for the next attempt. A finished run (0) and one stopped by a
    signal (130, 143) end the job: their copy goes."""
    if code in (0, 130, 143):
        return False
    env = os.environ
    return int(env.get("TORCHELASTIC_RESTART_COUNT", 0)) < int(
        env.get("TORCHELASTIC_MAX_RESTARTS", 0)
    )
