"""The learning-rate schedule, set every optimizer step."""

from __future__ import annotations

import math

FINAL_LR = 1e-6


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, then cosine decay to FINAL_LR at the
    last step (total_steps - 1)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return FINAL_LR + (base_lr - FINAL_LR) * 0.5 * (1.0 + math.cos(math.pi * progress))
