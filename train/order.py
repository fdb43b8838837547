"""The train order: which samples every optimizer step of every epoch holds, as a pure
function of (--seed, epoch, the train shards, --batch, --order, --repeated_aug), the same on
any number of ranks; and which part of a step each rank reads, in micro-batches of at most
--micro_batch.

Samples are numbered in the shards' order: tar after tar as the manifest lists them, and in
each tar as it holds them. An epoch is a permutation of them (--order global), or the tars
permuted and the samples shuffled within windows of BLOCK_TARS tars (--order blocks, which
reads each tar in a few long runs: network storage), made with a keyed hash (splitmix64 of the
index, keyed by a blake2b digest of the seed and epoch) and a stable sort: integer arithmetic,
the same in every version, unlike a NumPy random stream. With --repeated_aug K the epoch holds
ceil(N / K) distinct samples K times each, cut to N, the copies in one optimizer step and
spread over it (copy j of every image of the step before copy j + 1), as RASampler spreads
them over the GPUs.

The epoch is cut into N // batch optimizer steps of --batch samples, the last one taking the
remainder as well: every sample is trained once, and the step count depends on the train set
and --batch alone, so the LR schedule does not move with the number of GPUs. Rank r of W
reads a contiguous piece of each step (sizes differing by at most one) and cuts it into as
few micro-batches of at most the cap as it can, of sizes differing by at most one: the
accumulation is derived, step by step.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ORDERS = ("global", "blocks")
BLOCK_TARS = 4  # --order blocks: the samples of this many consecutive tars are shuffled together
MASK64 = (1 << 64) - 1


def order_key(seed: int, epoch: int, what: str) -> int:
    """A 64-bit key for one epoch's permutation of `what` (samples, tars)."""
    digest = hashlib.blake2b(f"order/{what}/{seed}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keyed_hash(values: np.ndarray, key: int) -> np.ndarray:
    """splitmix64's finaliser of (values + key): uint64 arithmetic, wrapping, no randomness."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def permutation(n: int, key: int) -> np.ndarray:
    """range(n) ordered by their keyed hashes (ties, which 64 bits make rare, by index)."""
    return np.argsort(keyed_hash(np.arange(n, dtype=np.uint64), key), kind="stable")


def blocks_order(counts: tuple[int, ...], seed: int, epoch: int) -> np.ndarray:
    """The tars in a permuted order, the samples of every BLOCK_TARS consecutive ones shuffled
    together."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    tars = permutation(len(counts), order_key(seed, epoch, "tars"))
    parts = []
    for w in range(0, len(tars), BLOCK_TARS):
        window = np.concatenate(
            [np.arange(starts[t], starts[t] + counts[t]) for t in tars[w : w + BLOCK_TARS]]
        )
        key = order_key(seed, epoch, f"block{w // BLOCK_TARS}")
        parts.append(window[permutation(len(window), key)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@lru_cache(maxsize=2)
def epoch_samples(
    counts: tuple[int, ...], seed: int, epoch: int, order: str = "global", repeated: int = 1,
    batch: int = 1,
) -> np.ndarray:  # fmt: skip
    """The sample indices of one epoch, in the order it trains them: (N,) int64, N the sum
    of `counts` (the train tars' sample counts, in the manifest's order). `batch` (a multiple
    of `repeated`) places the copies of --repeated_aug: all in one step, spread over it."""
    total = sum(counts)
    if order == "blocks":
        samples = blocks_order(counts, seed, epoch)
    else:
        samples = permutation(total, order_key(seed, epoch, "samples"))
    if repeated > 1:  # ceil(N / K) distinct samples, K copies each, cut to N
        samples = np.repeat(samples[: math.ceil(total / repeated)], repeated)[:total]
        samples = spread_copies(samples, repeated, batch)
    samples.flags.writeable = False  # cached: nobody may change it
    return samples


def spread_copies(samples: np.ndarray, repeated: int, batch: int) -> np.ndarray:
    """`samples` with each image's copies side by side, rearranged within every optimizer
    step: the first copy of each of its images, then the second copy of each, and so on. A
    rank reads a contiguous piece of a step, so on K ranks each holds one copy of every image
    of the step, as torchvision's RASampler places them (batch norm then sees an image once
    per rank); on fewer, each rank holds as few copies of one image as it can."""
    spread = samples.copy()
    for step in range(steps_per_epoch(len(samples), batch)):
        lo, hi = step_bounds(len(samples), batch, step)
        copy = np.arange(hi - lo) % repeated  # which copy of its image (groups start at lo)
        spread[lo:hi] = samples[lo:hi][np.argsort(copy, kind="stable")]
    return spread


def steps_per_epoch(samples: int, batch: int) -> int:
    """N // batch steps of `batch` samples, the last one taking the remainder too."""
    return max(1, samples // batch)


def step_bounds(samples: int, batch: int, step: int) -> tuple[int, int]:
    """[start, stop) of optimizer step `step` in the epoch's order."""
    start = step * batch
    last = step == steps_per_epoch(samples, batch) - 1
    return start, samples if last else min(samples, start + batch)


def piece(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous part of [start, stop): sizes differ by at most one, the
    larger ones first (numpy.array_split's rule)."""
    size, extra = divmod(stop - start, world_size)
    lo = start + rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def split_sizes(total: int, cap: int) -> list[int]:
    """`total` cut into as few parts of at most `cap` as it takes, sizes differing by at most
    one (the larger first), and none of one sample when there are two or more: batch norm
    cannot train on one sample of 1x1 features, and learns little from one of any size (so a
    part may hold one sample over the cap: 3 at a cap of 2)."""
    parts = max(1, min(math.ceil(total / cap), total // 2))
    size, extra = divmod(total, parts)
    return [size + (i < extra) for i in range(parts)]


@dataclass(frozen=True)
class Micro:
    """One micro-batch of a rank: [lo, hi) in the epoch's order, of optimizer step `step`,
    `last` when it ends this rank's part of the step (the gradients are then reduced)."""

    step: int
    lo: int
    hi: int
    last: bool

    @property
    def size(self) -> int:
        return self.hi - self.lo


def rank_micros(
    samples: int, batch: int, rank: int, world_size: int, cap: int, steps: int | None = None
) -> list[Micro]:
    """Every micro-batch rank `rank` trains in an epoch, in order, over its first `steps`
    optimizer steps (all of them by default)."""
    micros = []
    for step in range(steps_per_epoch(samples, batch) if steps is None else steps):
        lo, hi = piece(*step_bounds(samples, batch, step), rank, world_size)
        sizes = split_sizes(hi - lo, cap)
        for i, size in enumerate(sizes):
            micros.append(Micro(step, lo, lo + size, i == len(sizes) - 1))
            lo += size
    return micros
