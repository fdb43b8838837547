"""--ema: an exponential moving average of the weights, evaluated beside the live ones.

The decay is set by a half-life in epochs (--ema_halflife), not per step: a step's decay is
0.5 ** (1 / (half-life x steps per epoch)), so the average spans the same number of images
whatever the batch size and the number of GPUs. Parameters and BN running statistics are both
averaged (the averaged weights see other activations than the live ones, and averaging the
statistics is the standard approximation: timm's ModelEmaV2 does the same); BN's integer step
counters are copied. The average is kept in float32 on the device, in a copy of the plain model
that evaluation runs as it is, and is updated after every optimizer step (or every N: N steps'
decay at once, --ema_every) by one fused lerp over all tensors: no host sync.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass
class WeightAverage:
    model: torch.nn.Module  # the averaged copy (eval mode, no gradients)
    decay: float  # per optimizer step
    averaged: list[torch.Tensor]  # its float tensors: parameters and BN statistics
    live: list[torch.Tensor]  # the live model's, in the same order
    copied: list[torch.Tensor]  # its other tensors (BN's num_batches_tracked)
    live_copied: list[torch.Tensor]
    every: int = 1  # optimizer steps between updates (--ema_every)

    def due(self, step: int) -> bool:
        """Whether the update after global optimizer step `step` (from 0) is one to make."""
        return (step + 1) % self.every == 0

    def copies(self, step: int, warmup_steps: int) -> bool:
        """--ema_after_warmup: whether the update after `step` copies the live weights, as
        torchvision's does when the update before it fell in the warmup (it then reset the
        average's count): every update of the warmup, and the first one after it."""
        return step - self.every < warmup_steps


def step_decay(halflife_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay whose half-life is `halflife_epochs` epochs of optimizer steps."""
    return 0.5 ** (1.0 / (halflife_epochs * steps_per_epoch))


def tensors(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(floating-point tensors, the others) of a model's parameters and buffers, in order."""
    everything = [*model.parameters(), *model.buffers()]
    return [t for t in everything if t.is_floating_point()], [
        t for t in everything if not t.is_floating_point()
    ]


def build_average(model: torch.nn.Module, decay: float, every: int = 1) -> WeightAverage:
    """An average that starts as a copy of `model` (float32, on its device), `decay` per
    optimizer step, updated every `every` steps with `every` steps' worth of decay."""
    average = copy.deepcopy(model).eval().requires_grad_(False)
    averaged, copied = tensors(average)
    live, live_copied = tensors(model)
    if any(t.dtype != torch.float32 for t in averaged):
        raise ValueError("the weight average is kept in float32: build it from a float32 model")
    return WeightAverage(average, decay, averaged, live, copied, live_copied, every)


@torch.no_grad()
def update_average(average: WeightAverage, copy: bool = False) -> None:
    """average <- d x average + (1 - d) x live, for every float tensor at once, with d the
    decay of the `every` steps since the last update (torchvision's --model-ema-steps);
    with `copy`, average <- live (--ema_after_warmup during the warmup)."""
    if copy:
        torch._foreach_copy_(average.averaged, average.live)
    else:
        torch._foreach_lerp_(average.averaged, average.live, 1.0 - average.decay**average.every)
    for mine, theirs in zip(average.copied, average.live_copied, strict=True):
        mine.copy_(theirs)
