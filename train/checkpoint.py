"""Checkpoints: what last.pt and best.pt hold (weights, their average with --ema, optimizer,
scaler, the run's progress, every RNG state, the config), written under a temporary name and
renamed, so that a resumed run continues exactly where the saved one stopped; and loading
them safely."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from prep.atomic import atomic_file, remove_temporaries
from prep.provenance import code_version
from train.config import to_dict
from train.logs import say
from train.loop import Run


@dataclass(frozen=True)
class Progress:
    """How far a run has come: what a checkpoint holds besides the training state. Frozen:
    each step of the run makes a new one (dataclasses.replace)."""

    epoch: int = 0  # epochs completed, or the epoch in progress when batches_done > 0
    batches_done: int = 0  # of that epoch in progress
    totals: torch.Tensor | None = None  # its running (loss sum, correct, samples) per rank
    seconds: float = 0.0  # its training seconds so far
    history: tuple[dict, ...] = ()  # a row per finished epoch
    best_top1: float = -1.0
    best_weights: str = "live"  # which weights scored best_top1: live, or ema (the average)
    run_seconds: float = 0.0  # the run clock when it was saved (Run.run_seconds)


def training_state(run: Run, progress: Progress, num_classes: int) -> dict:
    """last.pt and best.pt: everything a resumed run needs to continue exactly."""
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": progress.epoch,
        "batches_done": progress.batches_done,
        "totals": None if progress.totals is None else progress.totals.cpu(),
        "seconds": progress.seconds,
        "history": list(progress.history),
        "best_top1": progress.best_top1,
        "best_weights": progress.best_weights,
        "run_seconds": run.run_seconds(),
        "ema": None if run.ema is None else run.ema.model.state_dict(),
        "rng": rng_state(run.model),
        "config": to_dict(run.cfg),
        "num_classes": num_classes,
        "code_version": code_version(),
    }


def save_training(out: Path, run: Run, progress: Progress, num_classes: int, best: bool) -> bool:
    """OUT/last.pt, and OUT/best.pt too when `best`. A failed write (a full disk) leaves the
    previous files as they were and says so: the run goes on. Whether both were saved."""
    state = training_state(run, progress, num_classes)
    run.saved_at = time.monotonic()
    for path in [out / "last.pt"] + ([out / "best.pt"] if best else []):
        try:
            save(path, state)
        except OSError as e:
            say(
                run.d,
                f"warning: could not save {path}: {e.strerror or e}; the previous {path.name} "
                "is kept and the run goes on (free some space: the next save tries again)",
            )
            return False
    return True


def save_position(
    out: Path,
    run: Run,
    progress: Progress,
    epoch: int,
    num_classes: int,
    batches_done: int,
    totals: torch.Tensor,
    seconds: float,
) -> None:
    """--checkpoint_every_minutes: last.pt at this batch of the epoch (rank 0 writes it, and
    its clock restarts there)."""
    position = replace(
        progress, epoch=epoch, batches_done=batches_done, totals=totals, seconds=seconds
    )
    if run.d.rank == 0:
        save_training(out, run, position, num_classes, best=False)


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files of a process killed while saving (the saved ones are whole)."""
    remove_temporaries(out)


def rng_state(model) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "stochastic_depth": model.sd_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, model) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    model.set_sd_rng_state(state["stochastic_depth"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, checkpoint: dict) -> None:
    """torch.save, whole or not at all (prep.atomic): a kill leaves the old file intact."""
    with atomic_file(path) as f:
        try:
            torch.save(checkpoint, f)
        except RuntimeError as e:  # torch's zip writer hides a failed write behind this
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def numpy_array_globals() -> list:
    """What unpickling a NumPy array needs (our checkpoints hold NumPy's RNG state), and no
    more: the allowlist PyTorch documents for loading such files with weights_only=True."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load(path: str | os.PathLike):
    """A checkpoint of ours, or any file of tensors (a torchvision .pth), without running
    code from the file: tensors, numbers, strings, containers and NumPy arrays only."""
    with torch.serialization.safe_globals(numpy_array_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)
