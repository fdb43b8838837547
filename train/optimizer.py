"""The optimizer and the loss scaler: SGD with momentum in torch's fused kernel, or LARS for
large global batches; weight decay grouped by tensor rank, every momentum buffer made up
front; a GradScaler for fp16."""

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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, d: Derived) -> torch.optim.Optimizer:
    """--optimizer sgd: SGD with momentum in torch's fused kernel, on the CPU as on CUDA (one
    code path; it is the fastest on both); lars: Lars below, over the same groups. Every
    momentum buffer is created up front (see add_momentum_buffers)."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "lars":
        optimizer = Lars(
            groups, lr=d.lr, momentum=cfg.momentum, eta=cfg.lars_eta, eps=cfg.lars_eps,
            momentum_correction=cfg.lars_momentum_correction,
        )  # fmt: skip
    else:
        optimizer = torch.optim.SGD(
            groups, lr=d.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=True
        )
    add_momentum_buffers(optimizer)
    return optimizer


class Lars(torch.optim.Optimizer):
    """LARS (You et al. 2017) as MLPerf's ResNet-50 reference defines it
    (mlcommons/training, image_classification/tensorflow2/lars_optimizer.py), per parameter
    tensor w with gradient g, for conv and linear weights (tensors of rank 2 and more):

        trust = eta * ||w|| / (||g|| + weight_decay * ||w|| + eps), or 1 where ||w|| or ||g|| is 0
        v = momentum * v + lr * trust * (g + weight_decay * w);   w = w - v

    and for BN weights and biases (rank 1: neither adaptation nor weight decay)
    v = momentum * v + lr * g. The learning rate enters the buffer before the momentum, as in
    the reference (TF's apply_momentum).

    With `momentum_correction` (NVIDIA's MLPerf runs, its sgdwfastlars, and --recipe mlperf),
    the momentum of the conv and linear weights is multiplied by lr_t / lr_{t-1} at each step
    (Goyal et al.'s correction; 1 at the first step, or after a step at LR 0), which makes
    the LR act after the momentum, as timm's order: v_t / lr_t = momentum * v_{t-1} /
    lr_{t-1} + trust * (g + weight_decay * w). NVIDIA's MXNet code applies it to these tensors
    only (the BN weights and biases come in later chunks of its update, which see the ratio
    of the same LR, 1), and so does this.
    A zero weight, such as each block's zero-initialised last BN or conv, gets trust 1, the
    reference's fallback, or it would never move. A parameter without a gradient (a block
    that batch-mode stochastic depth dropped this step) is left alone, momentum included, as
    fused SGD leaves it. The norms of a group's tensors come from one fused call and the
    trust ratios stay on the device: no host sync."""

    def __init__(
        self, params, lr: float, momentum: float, eta: float, eps: float,
        momentum_correction: bool = False,
    ) -> None:  # fmt: skip
        defaults = {"lr": lr, "momentum": momentum, "eta": eta, "eps": eps, "weight_decay": 0.0}
        # previous_lr: the LR of the group's last step, for the momentum correction
        defaults |= {"momentum_correction": momentum_correction, "previous_lr": None}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            stepped = [p for p in group["params"] if p.grad is not None]
            adapted = [p for p in stepped if p.ndim >= 2]  # conv and linear weights
            if adapted:
                momentum = group["momentum"] * self.lr_ratio(group)
                steps = self.trust_scaled_steps(adapted, group)
                self.update(adapted, momentum, steps)
            plain = [p for p in stepped if p.ndim < 2]  # BN weights and biases
            if plain:
                steps = torch._foreach_mul([p.grad for p in plain], group["lr"])
                self.update(plain, group["momentum"], steps)
            group["previous_lr"] = group["lr"]

    @staticmethod
    def lr_ratio(group: dict) -> float:
        """lr_t / lr_{t-1} with the momentum correction, else 1 (a host float: no sync)."""
        previous = group["previous_lr"]
        if not group["momentum_correction"] or not previous:
            return 1.0
        return group["lr"] / previous

    @staticmethod
    def trust_scaled_steps(params: list, group: dict) -> list:
        """lr x trust x (g + weight_decay x w) of each tensor, computed on the device."""
        grads, decay = [p.grad for p in params], group["weight_decay"]
        w = torch.stack(torch._foreach_norm(params))  # (n,)
        g = torch.stack(torch._foreach_norm(grads))
        ratio = group["eta"] * w / (g + decay * w + group["eps"])
        trust = torch.where((w > 0) & (g > 0), ratio, torch.ones_like(w))
        steps = torch._foreach_add(grads, params, alpha=decay)
        torch._foreach_mul_(steps, list((group["lr"] * trust).unbind()))
        return steps

    def update(self, params: list, momentum: float, steps: list) -> None:
        """v = momentum x v + step; w = w - v."""
        buffers = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, steps)
        torch._foreach_sub_(params, buffers)


def add_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
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
