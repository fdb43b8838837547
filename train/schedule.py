"""The run's plan over time: optimizer steps per epoch, the learning rate of
every step (cosine, linear, step or poly, after a linear warmup) and the train resolution of every
epoch (progressive resizing). Each is a pure function of the config and the step or epoch, so
a resumed run continues on the same schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from train.config import POLY_END_LR, POLY_POWER, RESOLUTION_STEP, Derived, TrainConfig
from train.order import steps_per_epoch as order_steps

FINAL_LR = 1e-6  # where cosine ends
STEP_GAMMA = 0.1  # the step schedule's factor at each milestone


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps every epoch has, and the LR schedule over them: the same on
    every rank and any number of ranks (train.order cuts an epoch by --batch alone)."""

    steps_per_epoch: int
    warmup_steps: int
    total_steps: int
    schedule: str = "cosine"  # cosine, linear, step or poly
    milestones: tuple[int, ...] = ()  # steps where the step schedule multiplies by STEP_GAMMA
    end_lr: float = POLY_END_LR  # where poly ends
    poly_power: float = POLY_POWER


def plan_steps(cfg: TrainConfig, d: Derived, train_samples: int) -> StepPlan:
    """The step plan of a run over `train_samples` images with this config."""
    steps_per_epoch = order_steps(train_samples, cfg.batch)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    return StepPlan(
        steps_per_epoch=steps_per_epoch,
        warmup_steps=round(d.warmup_epochs * steps_per_epoch),
        total_steps=cfg.epochs * steps_per_epoch,
        schedule=cfg.lr_schedule,
        milestones=tuple(round(m * steps_per_epoch) for m in d.lr_milestones),
        end_lr=POLY_END_LR if cfg.lr_end is None else cfg.lr_end,
        poly_power=POLY_POWER if cfg.lr_poly_power is None else cfg.lr_poly_power,
    )


def lr_at(
    step: int,
    *,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
    milestones: tuple[int, ...] = (),
    end_lr: float = POLY_END_LR,
    power: float = POLY_POWER,
) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, then
    cosine: decay to FINAL_LR at the last step (total_steps - 1), as a half cosine;
    linear: decay to 0 at the last step, in a straight line (FFCV's);
    step: base_lr x STEP_GAMMA ** (milestones passed) (torchvision's reference);
    poly: end_lr + (base_lr - end_lr) x (1 - progress) ** power, progress going from 0 at the
    end of warmup to 1 at total_steps (MLPerf's ResNet-50, NVIDIA's PolySchedule)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if schedule == "step":
        return base_lr * STEP_GAMMA ** sum(step >= m for m in milestones)
    if schedule == "poly":
        span = total_steps - warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
        return end_lr + (base_lr - end_lr) * (1.0 - progress) ** power
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    return FINAL_LR + (base_lr - FINAL_LR) * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluation_due(cfg: TrainConfig, epoch: int) -> bool:
    """Whether `epoch` (counted from 0) ends with an evaluation: after epoch --eval_offset
    (default --eval_every) and every --eval_every epochs from there, and after the last."""
    done, first = epoch + 1, cfg.eval_offset or cfg.eval_every
    return done == cfg.epochs or (done >= first and (done - first) % cfg.eval_every == 0)


def train_resolution(d: Derived, epoch: int) -> int:
    """The train crop size of `epoch` (counted from 0)."""
    return resolution_at(epoch, d.min_res, d.max_res, d.start_ramp, d.end_ramp)


def lr_of(plan: StepPlan, base_lr: float, step: int) -> float:
    """The learning rate of `step` under this plan's schedule."""
    return lr_at(
        step,
        base_lr=base_lr,
        warmup_steps=plan.warmup_steps,
        total_steps=plan.total_steps,
        schedule=plan.schedule,
        milestones=plan.milestones,
        end_lr=plan.end_lr,
        power=plan.poly_power,
    )


def resolution_at(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """FFCV's progressive resizing (`get_resolution`), epochs counted from 0: min_res up to
    start_ramp, max_res from end_ramp, linear between, rounded to a multiple of 32."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interpolated = min_res + (max_res - min_res) * (epoch - start_ramp) / (end_ramp - start_ramp)
    return round(interpolated / RESOLUTION_STEP) * RESOLUTION_STEP  # half to even, as np.round
