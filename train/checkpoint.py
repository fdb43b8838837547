"""Checkpoints: what last.pt and best.pt hold (weights, their average with --ema, optimizer,
scaler, the run's progress, every RNG state, the config), written under a temporary name and
renamed, so that a resumed run continues exactly where the saved one stopped; and loading
them safely. Only tensors, numbers, strings and containers go in, so a plain
`torch.load("last.pt")` (weights_only, torch's default) reads one.

A checkpoint carries its format: the number of the layout below. This code reads FORMAT
only, and refuses another in one line; there is no fallback for older layouts."""

from __future__ import annotations

import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from prep.atomic import atomic_file, remove_temporaries
from prep.provenance import code_version
from train.config import to_dict
from train.logs import say
from train.state import Progress, Run

FORMAT = 3  # the layout training_state writes; a change to it gets the next number
# Checkpoints written before formats were numbered (until 2026-12-03) are format 1.
UNNUMBERED = 1


class CheckpointError(Exception):
    """A checkpoint of another format than this code reads."""


def training_state(run: Run, progress: Progress) -> dict:
    """last.pt and best.pt: everything a resumed run needs to continue exactly."""
    return {
        "format": FORMAT,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": progress.epoch,
        "steps_done": progress.steps_done,
        "position": data_position(run),
        "feed": progress.feed,
        "totals": None if progress.totals is None else progress.totals.cpu(),
        "seconds": progress.seconds,
        "history": list(progress.history),
        "best_top1": progress.best_top1,
        "best_weights": progress.best_weights,
        "run_seconds": run.run_seconds(),
        "changes": list(progress.changes),
        "ema": None if run.ema is None else run.ema.model.state_dict(),
        "rng": rng_state(run.model),
        "config": to_dict(run.cfg),
        "num_classes": run.num_classes,
        "code_version": code_version(),
    }


def data_position(run: Run) -> dict:
    """What a position in the train order means: the shards (a digest of the train split's
    tars), the global batch, the order, the repeated augmentation, and the micro-batch cap
    and world size it was reached with. A resume onto other shards, batch or order is
    refused; another world size goes on at the same step."""
    cfg = run.cfg
    return {
        "shards": run.shards_digest,
        "batch": cfg.batch,
        "order": cfg.order,
        "repeated_aug": cfg.repeated_aug,
        "micro_batch": run.d.micro_batch,
        "world_size": run.d.world_size,
    }


def save_training(run: Run, progress: Progress, best: bool) -> bool:
    """OUT/last.pt, and OUT/best.pt too when `best`. A failed write (a full disk) leaves the
    previous files as they were and says so: the run goes on. Whether both were saved."""
    state = training_state(run, progress)
    run.saved_at = time.monotonic()
    for path in [run.out / "last.pt"] + ([run.out / "best.pt"] if best else []):
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
    run: Run, progress: Progress, epoch: int, steps_done: int, totals: torch.Tensor,
    seconds: float,
) -> None:  # fmt: skip
    """--checkpoint_every_minutes: last.pt at this batch of the epoch (rank 0 writes it, and
    its clock restarts there)."""
    position = replace(
        progress, epoch=epoch, steps_done=steps_done, totals=totals, seconds=seconds,
        feed=run.feed_state(),  # every rank: a collective
    )  # fmt: skip
    if run.d.rank == 0:
        save_training(run, position, best=False)


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files of a process killed while saving (the saved ones are whole)."""
    remove_temporaries(out)


def rng_state(model) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": numpy_rng_state(),
        "torch": torch.get_rng_state(),
        "stochastic_depth": model.sd_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def numpy_rng_state() -> tuple:
    """NumPy's global RNG state with its key array as a list: no NumPy object in the file."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), position, has_gauss, cached


def set_rng_state(state: dict, model) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    model.set_sd_rng_state(state["stochastic_depth"])
    if "cuda" in state and torch.cuda.is_available():  # saved where a GPU was
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
    """What unpickling a NumPy array needs, and no more (the allowlist PyTorch documents for
    weights_only=True): format 1 held NumPy's RNG state as an array, and must load far
    enough to be refused by its format."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load(path: str | os.PathLike):
    """A checkpoint of ours, or any file of tensors (a torchvision .pth), without running
    code from the file: tensors, numbers, strings and containers (and NumPy arrays)."""
    with torch.serialization.safe_globals(numpy_array_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def is_training_state(loaded) -> bool:
    """Whether a loaded file is one of our checkpoints (last.pt, best.pt), of any format."""
    return (
        isinstance(loaded, dict) and isinstance(loaded.get("config"), dict) and ("model" in loaded)
    )


def check_format(ckpt: dict, path: str | os.PathLike) -> dict:
    """The checkpoint, when it is of the format this code reads; else CheckpointError."""
    found = ckpt.get("format", UNNUMBERED)
    if found != FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint of format {found}, written by another version of this "
            f"project; this code reads format {FORMAT} only: train anew (another --out, or "
            "--resume none); its weights are torch.load(path, weights_only=False)['model']"
        )
    return ckpt
