"""The training state: `Run`, what the epoch functions step (the config, the network, its
optimizer and scaler, the output folder and the class count), built once per run; and
`Progress`, how far the run has come, what a checkpoint holds beside the training state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from train.board import Board
from train.config import Derived, TrainConfig
from train.ema import WeightAverage
from train.schedule import StepPlan

if TYPE_CHECKING:
    from train.inputs import TrainData


@dataclass
class Run:
    """What the epoch functions need; built once per run (train.model.standalone_run builds
    one for stepping outside the epoch loop)."""

    cfg: TrainConfig
    d: Derived
    model: torch.nn.Module  # the plain model: checkpoints and evaluation
    train_model: torch.nn.Module  # what the training step calls (DDP and/or compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    board: Board
    plan: StepPlan
    out: Path  # the run folder: checkpoints, history, summary, TensorBoard
    num_classes: int  # the shards' (ImageNet's for --synthetic without shards)
    ema: WeightAverage | None = None  # --ema: updated after every optimizer step
    data: TrainData | None = None  # the train micro-batches (and the feed's state to save)
    shards_digest: str = ""  # the train shards' (Shards.digest): checked by a resume
    stop_requested: list = field(default_factory=lambda: [False])  # [False] or [signal name]
    saved_at: float = field(default_factory=time.monotonic)  # when last.pt was last saved
    # The run clock: time.time() at which the run would have started had it never stopped
    # (a resumed run sets it back by the time it had spent), MLPerf's run_start.
    started_at: float = field(default_factory=time.time)
    # This rank's augmentation draws (mixup, CutMix, random erasing), on the device; reseeded
    # at every micro-batch (train.loop.seed_draws), so it carries no state worth saving.
    draws: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.draws = torch.Generator(device=self.d.device)

    def run_seconds(self) -> float:
        """The time this run has spent training and evaluating, over all its resumes."""
        return time.time() - self.started_at

    def feed_state(self) -> dict | None:
        """The train feed's state to save (a collective: every rank calls it)."""
        return None if self.data is None else self.data.feed_state()

    def save_due(self) -> bool:
        """Rank 0's clock says a time-based save of last.pt is due (--checkpoint_every_minutes)."""
        minutes = self.cfg.checkpoint_every_minutes
        return minutes > 0 and time.monotonic() - self.saved_at >= 60 * minutes


@dataclass(frozen=True)
class Progress:
    """How far a run has come: what a checkpoint holds besides the training state. Frozen:
    each step of the run makes a new one (dataclasses.replace)."""

    epoch: int = 0  # epochs completed, or the epoch in progress when steps_done > 0
    steps_done: int = 0  # optimizer steps of that epoch in progress
    totals: torch.Tensor | None = None  # its running (loss sum, correct, samples) per rank
    seconds: float = 0.0  # its training seconds so far
    history: tuple[dict, ...] = ()  # a row per finished epoch
    best_top1: float = -1.0
    best_weights: str = "live"  # which weights scored best_top1: live, or ema (the average)
    run_seconds: float = 0.0  # the run clock when it was saved (Run.run_seconds)
    # flags changed on resume (--allow_changes): {"epoch", "step", "flag", "old", "new"}
    changes: tuple[dict, ...] = ()
    feed: dict | None = None  # the train feed's state at the position (TrainData.feed_state)
