"""The optimizer and the loss scaler: SGD with momentum in torch's fused kernel, weight decay
grouped by tensor rank, every momentum buffer made up front; a GradScaler for fp16."""

from __future__ import annotations

import torch

from train.config import Derived, TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights (rank >= 2), not on BN weights or biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, d: Derived) -> torch.optim.SGD:
    """SGD with momentum in torch's fused kernel, on the CPU as on CUDA (one code path; it is
    the fastest on both), every momentum buffer created up front (see add_momentum_buffers)."""
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay),
        lr=d.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        fused=True,
    )
    add_momentum_buffers(optimizer)
    return optimizer


def add_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """A zero momentum buffer for every parameter that has none yet.

    In batch-mode stochastic depth a dropped block's parameters get no gradient, so SGD leaves
    them alone that step (no momentum or weight-decay update), and a block dropped at the
    first step gets its first gradient later than the others. The fused kernel treats its
    first step as all-or-nothing over a parameter group: a buffer missing after that step
    crashes it, and a first step that the GradScaler finds overflowed leaves every buffer
    uninitialized. With zero buffers from the start that first-step path never runs, and
    the result is the same: momentum x 0 + gradient is the gradient, which is what torch
    stores at a parameter's first step (dampening is 0)."""
    for group in optimizer.param_groups:
        if group["momentum"] == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)


def build_scaler(d: Derived) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast only (bf16 and float32 need none: a no-op scaler)."""
    return torch.amp.GradScaler(d.device.type, enabled=d.amp and d.amp_dtype == torch.float16)
