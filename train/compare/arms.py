"""The runs of a comparison: arms (a name and its trainer flags), seeds, where each run lives,
whether it has finished, and which of its weights still need evaluating on the val images
and the evaluation sets (--eval_splits)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.config import TrainConfig, parse_config, train_flags


def logits_file(split: str, which: str) -> str:
    """The per-image logits of a run's final (last.pt) or best (best.pt) weights on a split:
    val_final.npz, val_best.npz, imagenetv2_final.npz, ..."""
    return f"{split}_{which}.npz"


FINAL, BEST = logits_file("val", "final"), logits_file("val", "best")


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
    flags: tuple[str, ...]  # its trainer's command line: python -m train FLAGS
    config: TrainConfig  # what they resolve to

    @property
    def epochs(self) -> int:
        return self.config.epochs

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
    arms: list[Arm], seeds: int, first_seed: int, out: Path, common: list[str]
) -> list[RunSpec]:
    """Every run: OUT/ARM with one seed, OUT/ARM/seedS with several, trained with the common
    trainer flags, then the arm's (which win), then its folder and seed."""
    specs = []
    for arm in arms:
        shared = without(common, {name for name, _ in flag_groups(list(arm.flags))})
        for seed in range(first_seed, first_seed + seeds):
            where = out / arm.name if seeds == 1 else out / arm.name / f"seed{seed}"
            flags = (*shared, *arm.flags, "--out", str(where), "--seed", str(seed))
            specs.append(RunSpec(arm, seed, where, flags, parse_config(list(flags))))
    return specs


def flag_groups(argv: list[str]) -> list[tuple[str, list[str]]]:
    """Trainer flags as (name, their tokens): --lr 0.1, --lr=0.1, --ema, --no_ema (name
    ema). Hyphens read as underscores; an unknown flag keeps the token that follows only when
    it is no flag itself."""
    flags, groups, i = train_flags(), [], 0
    while i < len(argv):
        name, has_value = argv[i].partition("=")[0][2:].replace("-", "_"), "=" in argv[i]
        switch = name.removeprefix("no_") if name.startswith("no_") else name
        if switch in flags and flags[switch].type is bool:
            groups.append((switch, argv[i : i + 1]))
            i += 1
            continue
        follows = i + 1 < len(argv) and (name in flags or not argv[i + 1].startswith("--"))
        takes = not has_value and follows
        groups.append((name, argv[i : i + 1 + takes]))
        i += 1 + takes
    return groups


def without(argv: list[str], names: set[str]) -> list[str]:
    """The trainer flags of argv but those named: what an arm's own flags replace."""
    return [t for name, tokens in flag_groups(argv) if name not in names for t in tokens]


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


@dataclass(frozen=True)
class Evaluation:
    """One evaluation still to run: weights on a split, its logits file, and whether to take
    the averaged weights and the ReaL labels (val only)."""

    weights: Path
    logits: Path
    ema: bool
    split: str = "val"
    real: bool = False


def has_real(logits: Path) -> bool:
    with np.load(logits) as saved:
        return "real_correct" in saved.files


def evaluation_todo(
    directory: Path, splits: tuple[str, ...] = (), real: bool = False
) -> list[Evaluation]:
    """What is still to evaluate, on val and on each of `splits`: last.pt's live weights, and
    best.pt's best weights (live or EMA) when they are another epoch's; a logits file newer
    than its weights is done (on val with `real`, when it holds the ReaL column)."""
    done = summary(directory) or {}
    weights = [(directory / "last.pt", "final", False)]
    if done.get("best_epoch") not in (None, done.get("epochs_completed")) or (
        done.get("best_weights") == "ema"
    ):
        weights.append((directory / "best.pt", "best", done.get("best_weights") == "ema"))
    todo = []
    for split in ("val", *splits):
        with_real = real and split == "val"
        for path, which, ema in weights:
            logits = directory / logits_file(split, which)
            if not path.is_file():
                continue
            fresh = logits.is_file() and logits.stat().st_mtime >= path.stat().st_mtime
            if fresh and (not with_real or has_real(logits)):
                continue
            todo.append(Evaluation(path, logits, ema, split, with_real))
    return todo
