"""The network as the trainer runs it: built from models/ with the same initial weights on
every rank, on the device in its memory format, wrapped in DDP and compiled; with its
optimizer and scaler, the training state that the epoch loop steps."""

from __future__ import annotations

from pathlib import Path

import torch

from models import build_resnet
from train.board import Board
from train.config import Derived, TrainConfig
from train.optimizer import build_optimizer, build_scaler
from train.schedule import StepPlan
from train.state import Run


def build_model(cfg: TrainConfig, d: Derived, num_classes: int) -> torch.nn.Module:
    """The plain model (what checkpoints hold and evaluation runs), seeded from --seed."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_resnet(
        cfg.depth,
        variant=cfg.variant,
        sd_mode=d.sd_mode,
        final_survival=cfg.pL,
        num_classes=num_classes,
        sd_seed=cfg.seed,
        blurpool=cfg.blurpool,
        init=cfg.init,
    )
    model.checkpoint_activations = cfg.checkpoint_activations
    model.to(d.device)
    if d.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def wrap_for_training(model: torch.nn.Module, cfg: TrainConfig, d: Derived) -> torch.nn.Module:
    """What the training step calls: the model in DDP over several ranks, compiled on
    request. Batch mode compiles block by block in place, so DDP wraps the compiled blocks."""
    train_model = model
    if d.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[d.device.index] if d.device.type == "cuda" else None,
            # batch mode skips whole blocks (the same ones on every rank): their parameters
            # get no gradient this step, which DDP must be told to expect
            find_unused_parameters=d.sd_mode == "batch",
            gradient_as_bucket_view=True,
        )
    if cfg.compile and d.sd_mode == "batch":
        compile_blocks(model)  # in place: DDP, if any, wraps the same module
    elif cfg.compile:
        train_model = torch.compile(train_model)
    return train_model


def compile_blocks(model) -> None:
    """torch.compile block by block, in place: in batch mode the per-step skip decisions stay
    plain Python, and each block compiles a kept and a skipped variant."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for block in model.blocks():
        block.compile()


def build_training(cfg: TrainConfig, d: Derived, num_classes: int):
    """(model, the module the training step calls, optimizer, scaler), before any resume."""
    model = build_model(cfg, d, num_classes)
    optimizer = build_optimizer(model, cfg, d)
    scaler = build_scaler(d)
    return model, wrap_for_training(model, cfg, d), optimizer, scaler


def standalone_run(cfg: TrainConfig, d: Derived, num_classes: int, steps: int = 1) -> Run:
    """The trainer's model, optimizer and scaler in a Run for stepping with train_step outside
    the epoch loop (benchmarks, tests): no outputs, the learning rate stays at d.lr."""
    model, train_model, optimizer, scaler = build_training(cfg, d, num_classes)
    plan = StepPlan(
        steps_per_epoch=steps,
        warmup_steps=0,
        total_steps=steps,
    )
    return Run(
        cfg=cfg,
        d=d,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scaler=scaler,
        board=Board(Path("."), False, None),
        plan=plan,
        out=Path("."),
        num_classes=num_classes,
    )
