"""Is a difference in top-1 real? The statistics of the comparison tool.

Two runs evaluated on the same val images: the difference in points with a 95% interval from
a paired bootstrap over the images, and McNemar's exact test on the images that one run gets
right and the other wrong (a binomial test of the discordant pairs, by SciPy). Several seeds
per arm: the mean and standard deviation of each arm's top-1, and the difference of means with
Welch's 95% interval (SciPy's t-test). Inputs are per-image correctness vectors (0/1) in the
same image order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
ALPHA = 0.05


@dataclass(frozen=True)
class Paired:
    """Run b against run a on the same images; points are percentage points."""

    images: int
    difference: float  # points: top-1 of b - top-1 of a
    low: float  # 95% interval of the difference, paired bootstrap over the images
    high: float
    only_a: int  # images a gets right and b wrong
    only_b: int  # images b gets right and a wrong
    p_value: float  # McNemar's exact test


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p of McNemar's exact test: the discordant pairs against a fair coin."""
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)


def bootstrap_interval(
    a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval (points) of top-1(b) - top-1(a) over images resampled with
    replacement. Each image's b - a is -1, 0 or +1, so a resample is the multinomial draw of
    how many of each: the same distribution as resampling indices, in O(resamples) memory."""
    change = b.astype(np.int8) - a.astype(np.int8)
    n = len(change)
    shares = [np.mean(change == v) for v in (-1, 0, 1)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    differences = 100 * (counts[:, 2] - counts[:, 0]) / n
    low, high = np.percentile(differences, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(low), float(high)


def paired(a: np.ndarray, b: np.ndarray) -> Paired:
    """b against a: both boolean (or 0/1) correctness vectors over the same images."""
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"correctness vectors of the same images expected, got {a.shape}, {b.shape}"
        )
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    low, high = bootstrap_interval(a, b)
    return Paired(
        images=len(a),
        difference=100 * (b.mean() - a.mean()),
        low=low,
        high=high,
        only_a=only_a,
        only_b=only_b,
        p_value=mcnemar_exact(only_a, only_b),
    )


def verdict(name_b: str, name_a: str, p: Paired) -> str:
    """One sentence: the difference, its interval, McNemar's p and what they say."""
    significant = p.p_value < ALPHA
    return (
        f"{name_b} - {name_a}: {p.difference:+.2f} points (95% CI {p.low:+.2f} to "
        f"{p.high:+.2f}), McNemar p = {p.p_value:.2g}: "
        f"{'significant' if significant else 'not significant'} on these {p.images:,} images"
        f" ({p.only_b} right only in {name_b}, {p.only_a} only in {name_a})"
    )


@dataclass(frozen=True)
class Seeds:
    """Top-1 (points) of one arm over its seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:  # sample standard deviation; None with one seed
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


def welch(a: Seeds, b: Seeds) -> tuple[float, float, float] | None:
    """(mean of b - mean of a, 95% interval low, high) by Welch's t; None below 2 seeds each."""
    if len(a.values) < 2 or len(b.values) < 2:
        return None
    if a.std == 0 and b.std == 0:  # no spread at all: the interval is the point
        return b.mean - a.mean, b.mean - a.mean, b.mean - a.mean
    result = stats.ttest_ind(b.values, a.values, equal_var=False)
    interval = result.confidence_interval(1 - ALPHA)
    return b.mean - a.mean, float(interval.low), float(interval.high)


def sampling_error(top1_points: float, images: int) -> float:
    """Standard error (points) of one top-1 measured on `images` images: the val-set noise."""
    p = top1_points / 100
    return 100 * math.sqrt(p * (1 - p) / images)


def larger_noise(seed_std: float, image_error: float) -> str:
    """Which of the two kinds of noise is larger, in words."""
    if seed_std > image_error:
        return (
            f"seed-to-seed spread ({seed_std:.2f} points) is larger than the val-image "
            f"sampling error ({image_error:.2f} points): more seeds help more than more images"
        )
    return (
        f"the val-image sampling error ({image_error:.2f} points) is at least the seed-to-seed "
        f"spread ({seed_std:.2f} points): the val set, not the seed, limits the comparison"
    )
