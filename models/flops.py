"""FLOP counts of a ResNet, by torch.utils.flop_counter (2 FLOPs per multiply-add): one
eval-mode forward pass, one training step per image with each residual branch's share, and
the share of the training FLOPs that batch-mode stochastic depth skips."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.resnet import Bottleneck, ResNet, build_resnet


def count_flops(model: ResNet, image_size: int) -> int:
    """FLOPs of one eval-mode forward pass of one image, counted by torch (2 per multiply-add)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops()


def training_flops(
    depth: int, variant: str, image_size: int, num_classes: int, blurpool: bool = False
) -> tuple[float, list[float]]:
    """(FLOPs of one training step per image, forward + backward, with every block computed;
    the part of them that each block's residual branch costs, in forward order), counted by
    torch per module. A dropped block saves exactly its branch's part: its projection
    shortcut, where it has one, still runs."""
    batch = 2  # batch norm in training mode needs more than one value per channel
    counter = FlopCounterMode(display=False)
    with torch.device("meta"):  # shapes only: the same counts, no memory, no arithmetic
        model = build_resnet(
            depth, variant=variant, num_classes=num_classes, blurpool=blurpool
        ).train()
        with counter:
            model(torch.zeros(batch, 3, image_size, image_size)).sum().backward()
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def flops(name: str) -> float:
        return sum(counts.get(f"{root}.{name}", {}).values()) / batch

    branches = [
        flops(name) - flops(f"{name}.downsample")
        for name, module in model.named_modules()
        if isinstance(module, Bottleneck)
    ]
    return counter.get_total_flops() / batch, branches


def skipped_share(probs: list[float], total: float, branches: list[float]) -> float:
    """The expected share of the training FLOPs that batch mode skips: block l is dropped with
    probability 1 - p_l, and then its branch is not computed, forward or backward."""
    return sum((1 - p) * b for p, b in zip(probs, branches, strict=True)) / total
