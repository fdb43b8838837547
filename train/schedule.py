"""The run's step plan (batches and optimizer steps per epoch, warmup and total steps) and the
learning-rate schedule, set every optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.config import Derived, TrainConfig

FINAL_LR = 1e-6
MIN_LAST_BATCH = 2


@dataclass(frozen=True)
class StepPlan:
    """How many batches and steps every epoch has: the same on every rank."""

    loader_batches: int  # what DALI yields per epoch on each rank
    batches_per_epoch: int  # loader batches used per epoch (--max_steps_per_epoch may cut)
    skip_last_batch: bool  # some rank's last batch is empty: every rank skips it
    steps_per_epoch: int  # optimizer steps
    warmup_steps: int
    total_steps: int


def batches_per_epoch(num_samples: int, world_size: int, micro_batch: int) -> tuple[int, bool]:
    """(batches each rank yields, whether every rank skips its last one), as DALI's padded
    sharding gives them: every rank pads its shard to ceil(N / ranks) samples. The last batch
    is skipped (by every rank, to keep DDP's all-reduces paired) when some rank's would hold
    fewer than MIN_LAST_BATCH samples: an empty batch cannot join the gradient all-reduce, and
    batch norm cannot train on one sample. The reshuffle changes which samples that is."""
    per_rank = math.ceil(num_samples / world_size)
    batches = math.ceil(per_rank / micro_batch)
    smallest_shard = num_samples // world_size
    return batches, smallest_shard - (batches - 1) * micro_batch < MIN_LAST_BATCH


def plan_steps(cfg: TrainConfig, d: Derived, train_samples: int) -> StepPlan:
    """The step plan of a run over `train_samples` images with this config on d.world_size
    ranks."""
    loader_batches, skip_last = batches_per_epoch(train_samples, d.world_size, d.micro_batch)
    used = loader_batches
    if cfg.max_steps_per_epoch:
        used, skip_last = min(loader_batches, cfg.max_steps_per_epoch * cfg.accum), False
    steps_per_epoch = math.ceil((used - int(skip_last)) / cfg.accum)
    return StepPlan(
        loader_batches=loader_batches,
        batches_per_epoch=used,
        skip_last_batch=skip_last,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=round(d.warmup_epochs * steps_per_epoch),
        total_steps=cfg.epochs * steps_per_epoch,
    )


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, then cosine decay to FINAL_LR at the
    last step (total_steps - 1)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return FINAL_LR + (base_lr - FINAL_LR) * 0.5 * (1.0 + math.cos(math.pi * progress))
