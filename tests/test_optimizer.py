"""The trainer's optimizer: torch's fused SGD (the kernel CUDA runs, which runs on the CPU too)
with batch-mode stochastic depth, whose dropped blocks get no gradient, and with fp16 loss
scaling, whose overflow steps the fused kernel must skip."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from train.config import derive, parse_config
from train.loop import train_step
from train.model import standalone_run
from train.optimizer import param_groups
from train.state import Run

NUM_CLASSES = 3


def trainer(*flags: str, fp16: bool = False) -> Run:
    """The trainer's model, optimizer and scaler, built by its own code, on the CPU."""
    cfg = parse_config(["--device", "cpu", "--batch", "4", "--image_size", "32", *flags])
    d = derive(cfg, 0, 1, 0)
    if fp16:  # what a GPU run with --amp_dtype fp16 derives; CPU autocast runs fp16 too
        d = dataclasses.replace(d, amp=True, amp_dtype=torch.float16)
    return standalone_run(cfg, d, NUM_CLASSES)


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (4,), generator=g))
        for _ in range(n)
    ]


def state_of(run: Run, block) -> list[torch.Tensor]:
    """The parameters of a block's residual branch and their momentum buffers (a dropped
    block still computes, and trains, its projection shortcut: the projection, and in a
    pre-activation block the bn1 that feeds it)."""
    shortcut = ("downsample.", "bn1.") if block.preact and block.downsample else ("downsample.",)
    params = [p for name, p in block.named_parameters() if not name.startswith(shortcut)]
    return snapshot(run, params)


def test_the_trainer_uses_the_fused_kernel_on_the_cpu_too():
    run = trainer()
    assert run.optimizer.defaults["fused"] is True


def test_fused_sgd_trains_through_blocks_whose_first_gradient_comes_late():
    run = trainer("--sd", "1", "--pL", "0.5", "--weight_decay", "1e-3", "--seed", "3")
    assert run.optimizer.defaults["fused"] is True
    # The reference: a copy of the same model (same weights, same stochastic-depth draws)
    # under torch's plain, unfused SGD, which creates each momentum buffer at its first grad.
    reference = copy.deepcopy(run.model)
    plain = torch.optim.SGD(
        param_groups(reference, run.cfg.weight_decay),
        lr=run.d.lr,
        momentum=run.cfg.momentum,
        foreach=False,
    )
    blocks = run.model.blocks()
    decisions = []
    for step, (x, y) in enumerate(batches(8)):
        before = [state_of(run, b) for b in blocks]
        train_step(run, x, y, boundary=True)  # crashed here in the fused kernel before the fix
        keeps = [b.keep for b in blocks]
        decisions.append(keeps)
        for block, keep, old in zip(blocks, keeps, before, strict=True):
            new = state_of(run, block)
            unchanged = all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
            # A dropped block: no gradient, so no momentum or weight-decay update that step.
            assert unchanged == (not keep), (step, block)
        logits = reference(x)
        F.cross_entropy(logits, y, label_smoothing=run.cfg.label_smoothing).backward()
        plain.step()
        plain.zero_grad(set_to_none=True)
        assert [b.keep for b in reference.blocks()] == keeps
        for (name, a), b in zip(run.model.named_parameters(), reference.parameters(), strict=True):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7, (step, name)
    late = [
        i
        for i in range(len(blocks))
        if not decisions[0][i] and any(keeps[i] for keeps in decisions[1:])
    ]
    assert late, "no block got its first gradient late: pick another --seed"


def fp16_scale(run: Run, scale: float) -> None:
    run.scaler.load_state_dict({**run.scaler.state_dict(), "scale": scale})


def params_and_momentum(run: Run) -> list[torch.Tensor]:
    return snapshot(run, list(run.model.parameters()))


def snapshot(run: Run, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of the parameters and their momentum buffers (an empty tensor for none yet)."""
    buffers = [run.optimizer.state[p].get("momentum_buffer", torch.empty(0)) for p in params]
    return [t.detach().clone() for t in params + buffers]


@pytest.mark.parametrize("when", ["first step", "later step"])
def test_an_fp16_overflow_step_leaves_weights_and_momentum_untouched(when):
    """--amp_dtype fp16: the GradScaler hands the overflow check to the fused kernel. An
    overflowing step must change nothing but the scale, and training then goes on as if it
    had not happened (the fused kernel's own first step left garbage momentum buffers)."""
    data = batches(4)
    before_overflow = 0 if when == "first step" else 1
    run, clean = [trainer("--amp_dtype", "fp16", fp16=True) for _ in range(2)]
    assert run.scaler.is_enabled() and run.optimizer.defaults["fused"] is True
    for r in (run, clean):
        fp16_scale(r, 2.0**10)
    for x, y in data[:before_overflow]:
        for r in (run, clean):
            train_step(r, x, y, boundary=True)
    fp16_scale(run, 2.0**100)  # the scaled gradients overflow float16
    saved = params_and_momentum(run)
    x, y = data[before_overflow]
    train_step(run, x, y, boundary=True)
    assert run.scaler.get_scale() == 2.0**99  # the overflow was seen, and the scale backed off
    after = params_and_momentum(run)
    assert all(torch.equal(a, b) for a, b in zip(saved, after, strict=True))
    fp16_scale(run, 2.0**10)
    for x, y in data[before_overflow:]:
        for r in (run, clean):
            train_step(r, x, y, boundary=True)
    moved = [(a - b).abs().max() for a, b in zip(params_and_momentum(clean), saved, strict=True)]
    assert max(moved) > 1e-3  # the steps after the overflow did train
    for a, b in zip(params_and_momentum(run), params_and_momentum(clean), strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-6
