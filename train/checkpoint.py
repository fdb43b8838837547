"""Checkpoints: written under a temporary name and renamed, with every RNG state, so that a
resumed run continues exactly where the saved one stopped."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


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
    """torch.save to path.tmp, flush to disk, rename: a kill leaves the old file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
