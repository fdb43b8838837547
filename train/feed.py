"""The train feed: this rank's micro-batches of the train order (train.order), read from the
shards by byte range at the offsets the DALI index files give (the JPEG and its .cls), for a
DALI external source. It is a pure function of DALI's (epoch, iteration) and what it was made
with, so a pipeline restored from its checkpoint feeds what the saved one would have, and a
new one started at any step of any epoch feeds from there on any number of ranks. It is
pickled into DALI's worker processes (parallel external source): no open file or lock in it;
each worker opens the tars it reads once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from train.order import Micro, epoch_samples, rank_micros
from train.shards import Shards

# The columns of a sample's location: which tar, the JPEG's offset and size, the .cls's.
TAR, JPG, JPG_SIZE, CLS, CLS_SIZE = range(5)


@dataclass(frozen=True)
class Locations:
    """Where every train sample is, in the shards' order: (N, 5) int64 rows of `tars`."""

    tars: tuple[str, ...]
    table: np.ndarray
    counts: tuple[int, ...]  # samples per tar, in the manifest's order

    @property
    def samples(self) -> int:
        return len(self.table)


def train_locations(shards: Shards) -> Locations:
    """Every train sample's byte ranges, from the DALI index files (wds2idx v1.2: a line per
    sample, `jpg OFFSET SIZE NAME cls OFFSET SIZE NAME`, the JPEG first)."""
    tars, index_files = shards.paths("train")
    rows, counts = [], []
    for t, path in enumerate(index_files):
        with open(path) as f:
            lines = f.read().splitlines()[1:]
        for line in lines:
            fields = line.split()
            rows.append((t, int(fields[1]), int(fields[2]), int(fields[5]), int(fields[6])))
        counts.append(len(lines))
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return Locations(tuple(tars), table, tuple(counts))


@dataclass(frozen=True)
class Origin:
    """Where a pipeline's first DALI epoch starts: the run's epoch, and this rank's first
    micro-batch in it. What it feeds is (origin + DALI's epoch, DALI's iteration), so a
    pipeline restored from a checkpoint needs the origin of the one that saved it."""

    epoch: int
    micro: int = 0


@dataclass
class TrainFeed:
    """The external source's function: DALI's BatchInfo -> (JPEGs, .cls digits, sizes) of
    the micro-batch, or StopIteration at the end of this rank's part of an epoch."""

    locations: Locations
    seed: int
    order: str
    repeated: int  # --repeated_aug
    batch: int  # the global batch of an optimizer step
    rank: int
    world_size: int
    cap: int  # --micro_batch: at most this many samples per micro-batch
    steps: int  # optimizer steps an epoch (fewer than all with --max_steps_per_epoch)
    resolutions: tuple[int, ...]  # the train crop of every epoch
    origin: Origin
    files: dict = field(default_factory=dict, repr=False, compare=False)  # per worker

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("files", "micros")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, files={})

    @cached_property
    def micros(self) -> list[Micro]:
        """This rank's micro-batches of an epoch: the same every epoch."""
        return rank_micros(
            self.locations.samples, self.batch, self.rank, self.world_size, self.cap, self.steps
        )

    def position(self, dali_epoch: int, iteration: int) -> tuple[int, int]:
        """(the run's epoch, this rank's micro-batch index in it) of DALI's (epoch, iteration)."""
        first = self.origin.micro if dali_epoch == 0 else 0
        return self.origin.epoch + dali_epoch, first + iteration

    def samples_of(self, epoch: int, micro: Micro) -> np.ndarray:
        order = epoch_samples(
            self.locations.counts, self.seed, epoch, self.order, self.repeated, self.batch
        )  # fmt: skip
        return order[micro.lo : micro.hi]

    def read(self, tar: int, offset: int, size: int) -> np.ndarray:
        fd = self.files.get(tar)
        if fd is None:
            fd = self.files[tar] = os.open(self.locations.tars[tar], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.locations.tars[tar]}: {len(data)} bytes at {offset}, not {size}")
        return np.frombuffer(data, dtype=np.uint8)

    def __call__(self, info):
        epoch, index = self.position(info.epoch_idx, info.iteration)
        if index >= len(self.micros) or epoch >= len(self.resolutions):
            raise StopIteration
        rows = self.locations.table[self.samples_of(epoch, self.micros[index])]
        jpegs = [self.read(r[TAR], r[JPG], r[JPG_SIZE]) for r in rows]
        digits = [self.read(r[TAR], r[CLS], r[CLS_SIZE]) for r in rows]
        size = np.full(2, self.resolutions[epoch], dtype=np.float32)
        return jpegs, digits, [size] * len(rows)
