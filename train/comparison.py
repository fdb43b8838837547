"""The runs of a comparison: arms (a name and its trainer flags), seeds, where each run lives,
whether it has finished, and which of its weights still need evaluating on the val images."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from train.config import parse_config

FINAL, BEST = "val_final.npz", "val_best.npz"  # per-image logits of last.pt and best.pt


@dataclass(frozen=True)
class Arm:
    name: str
    flags: tuple[str, ...]


DEFAULT_ARMS = (Arm("baseline", ("--sd", "0")), Arm("sd", ("--sd", "1")))


@dataclass(frozen=True)
class RunSpec:
    arm: Arm
    seed: int
    directory: Path
    epochs: int  # what the run trains, for deciding whether it has finished

    @property
    def name(self) -> str:
        return self.arm.name if self.directory.name == self.arm.name else (
            f"{self.arm.name}/{self.directory.name}"
        )  # fmt: skip


def parse_arm(text: str) -> Arm:
    """'NAME=FLAGS' -> Arm; the flags are split as a shell would."""
    name, sep, flags = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name.strip()):
        raise ValueError(
            f'--arm {text!r}: write NAME="TRAINER FLAGS" with a name of letters, digits, '
            "'_', '.' or '-', e.g. --arm fast=\"--recipe fast\""
        )
    return Arm(name.strip(), tuple(shlex.split(flags)))


def run_specs(
    arms: list[Arm], seeds: int, first_seed: int, out: Path, extra: list[str], epochs: int | None
) -> list[RunSpec]:
    """Every run: OUT/ARM with one seed, OUT/ARM/seedS with several."""
    specs = []
    for arm in arms:
        given = ["--epochs", str(epochs)] if epochs is not None else []
        planned = parse_config([*given, *extra, *arm.flags]).epochs
        for seed in range(first_seed, first_seed + seeds):
            where = out / arm.name if seeds == 1 else out / arm.name / f"seed{seed}"
            specs.append(RunSpec(arm, seed, where, planned))
    return specs


def summary(directory: Path) -> dict | None:
    path = directory / "training_summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def finished(run: RunSpec) -> bool:
    """All its epochs trained, or stopped at its --target_top1."""
    done = summary(run.directory)
    if done is None:
        return False
    return done.get("epochs_completed", 0) >= run.epochs or done.get("target_epoch") is not None


def finished_words(run: RunSpec) -> str:
    target_epoch = (summary(run.directory) or {}).get("target_epoch")
    if target_epoch is not None:
        return f"reached its --target_top1 at epoch {target_epoch}"
    return f"finished its {run.epochs} epochs"


def evaluation_todo(directory: Path) -> list[tuple[Path, Path, bool]]:
    """(weights, logits file, whether to take the averaged weights) still to evaluate:
    last.pt's live weights, and best.pt's best weights (live or EMA) when they are another
    epoch's; a logits file newer than its weights is done."""
    done = summary(directory) or {}
    todo = [(directory / "last.pt", directory / FINAL, False)]
    if done.get("best_epoch") not in (None, done.get("epochs_completed")) or (
        done.get("best_weights") == "ema"
    ):
        todo.append((directory / "best.pt", directory / BEST, done.get("best_weights") == "ema"))
    return [
        (weights, logits, ema)
        for weights, logits, ema in todo
        if weights.is_file()
        and not (logits.is_file() and logits.stat().st_mtime >= weights.stat().st_mtime)
    ]
