"""Resume: which checkpoint a run continues from (--resume auto, none or a path), the checks
that it fits this run, and putting its state back into the model, optimizer, scaler and RNGs."""

from __future__ import annotations

from pathlib import Path

from train import checkpoint
from train.config import Derived, TrainConfig
from train.ema import WeightAverage
from train.logs import say
from train.state import Progress

# Changing these on resume would load weights into another network.
ARCHITECTURE = ("depth", "variant", "sd", "sd_mode", "pL", "blurpool")
# Flags that say where and how fast a run reads and writes, not what it trains.
NOT_TRAINING = {
    "resume", "out", "data_dir", "cache", "workers", "dali", "log_every",
    "checkpoint_every_minutes", "dist_timeout_minutes",
}  # fmt: skip


class ResumeError(Exception):
    """The checkpoint to resume from belongs to another network or data set."""


def resolve_resume(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        last = out / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.resume)


def check_resumable(ckpt: dict, cfg: TrainConfig, num_classes: int, path: Path) -> list[str]:
    """Refuse another architecture; return the other flags that changed (allowed)."""
    saved = ckpt["config"]
    clash = [
        f"--{k} {saved[k]} (now {getattr(cfg, k)})"
        for k in ARCHITECTURE
        if saved[k] != getattr(cfg, k)
    ]
    if ckpt["num_classes"] != num_classes:
        clash.append(f"{ckpt['num_classes']} classes (the shards have {num_classes})")
    if clash:
        raise ResumeError(
            f"{path} was trained with {', '.join(clash)}: use another --out, the same flags, "
            "or --resume none to start over"
        )
    return [k for k, v in saved.items() if k not in NOT_TRAINING and v != getattr(cfg, k, v)]


def checkpoint_to_resume(cfg: TrainConfig, d: Derived, out: Path, num_classes: int) -> dict | None:
    """The checkpoint this run continues from, checked and announced; None to start afresh."""
    path = resolve_resume(cfg, out)
    if path is None:
        return None
    ckpt = checkpoint.check_format(checkpoint.load(path), path)
    changed = check_resumable(ckpt, cfg, num_classes, path)
    say(
        d,
        f"resuming from {path}: epoch {ckpt['epoch'] + 1}, batch {ckpt['batches_done']}"
        + (f" (flags changed since: {', '.join(changed)})" if changed else ""),
    )
    return ckpt


def restore(ckpt: dict, model, optimizer, scaler) -> Progress:
    """Load a checkpoint's state into the freshly built training state; its progress."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    checkpoint.set_rng_state(ckpt["rng"], model)
    return Progress(
        epoch=ckpt["epoch"],
        batches_done=ckpt["batches_done"],
        totals=ckpt["totals"],
        seconds=ckpt["seconds"],
        history=tuple(ckpt["history"]),
        best_top1=ckpt["best_top1"],
        best_weights=ckpt["best_weights"],
        run_seconds=ckpt["run_seconds"],
    )


def restore_average(ckpt: dict | None, average: WeightAverage, d: Derived) -> None:
    """--ema on resume: the checkpoint's average, or (a checkpoint of a run without --ema)
    the average starts from the resumed weights, as a new run's starts from the initial ones."""
    if ckpt is None:
        return
    if ckpt["ema"] is None:
        say(d, "--ema: the checkpoint holds no average of the weights; it starts from its weights")
        return
    average.model.load_state_dict(ckpt["ema"])
