"""Resume: which checkpoint a run continues from (--resume auto, none or a path), the checks
that it fits this run, and putting its state back into the model, optimizer, scaler and RNGs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from train import checkpoint
from train.config import Derived, TrainConfig, change_words, changed_flags
from train.ema import WeightAverage
from train.logs import say, target_row
from train.state import Progress

# Changing these on resume would load weights into another network: never accepted.
ARCHITECTURE = ("depth", "variant", "sd", "sd_mode", "pL", "blurpool")


class ResumeError(Exception):
    """The checkpoint to resume from belongs to another network or data set, or to a run of
    other flags."""


def resolve_resume(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        last = out / "last.pt"
        return last if last.is_file() else None
    return Path(cfg.resume)


def check_position(ckpt: dict, cfg: TrainConfig, shards_digest: str, path: Path) -> None:
    """Refuse a position in another train order: other shards, another global batch, order
    or repeated augmentation (steps would hold other samples). Another world size is fine."""
    saved = ckpt["position"]
    now = {"shards": shards_digest, "batch": cfg.batch, "order": cfg.order}
    now["repeated_aug"] = cfg.repeated_aug
    other = [k for k, v in now.items() if saved[k] != v]
    if other:
        words = ", ".join(
            "other shards" if k == "shards" else f"--{k} {saved[k]} (now {now[k]})" for k in other
        )
        raise ResumeError(
            f"{path} stopped at epoch {ckpt['epoch'] + 1}, step {ckpt['steps_done']} of a train "
            f"order of {words}: a step there holds other samples; use another --out, or "
            "--resume none to start over"
        )


def check_resumable(ckpt: dict, cfg: TrainConfig, num_classes: int, path: Path) -> list[dict]:
    """Refuse another architecture, and (unless --allow_changes) any other change of a flag
    that changes what is trained; the changes accepted, stamped with where they take effect:
    the epoch (counted from 1, as the history does) and the optimizer steps of it done."""
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
    changes = changed_flags(saved, cfg)
    if changes and not cfg.allow_changes:
        raise ResumeError(
            f"{path} holds a run of other flags, and a run folder holds one run: "
            f"{change_words(changes)}; rerun with the run's flags, use another --out, or "
            "--allow_changes to go on with these (each change is recorded)"
        )
    where = {"epoch": ckpt["epoch"] + 1, "step": ckpt["steps_done"]}
    return [where | change for change in changes]


def finished(ckpt: dict, cfg: TrainConfig) -> bool:
    """Whether the checkpoint's run has trained all its epochs or reached --target_top1."""
    done = ckpt["epoch"] >= cfg.epochs and ckpt["steps_done"] == 0
    return done or target_row(ckpt["history"], cfg.target_top1) is not None


def checkpoint_to_resume(
    cfg: TrainConfig, d: Derived, out: Path, num_classes: int, shards_digest: str
) -> tuple[dict | None, list[dict]]:
    """(the checkpoint this run continues from, checked and announced, or None to start
    afresh; the flag changes accepted with --allow_changes)."""
    path = resolve_resume(cfg, out)
    if path is None:
        return None, []
    ckpt = checkpoint.check_format(checkpoint.load(path), path)
    changes = check_resumable(ckpt, cfg, num_classes, path)
    check_position(ckpt, cfg, shards_digest, path)
    if not (finished(ckpt, cfg) and not changes):
        ranks = ckpt["position"]["world_size"]
        other = f", saved on {ranks} ranks" if ranks != d.world_size else ""
        say(
            d,
            f"resuming from {path}: epoch {ckpt['epoch'] + 1}, step {ckpt['steps_done']}{other}"
            + (f" (flags changed, --allow_changes: {change_words(changes)})" if changes else ""),
        )
    return ckpt, changes


def resumed_micro_batch(ckpt: dict | None, cfg: TrainConfig, d: Derived) -> Derived:
    """The run's micro-batch cap on resume: its own, unless --micro_batch is given (then a
    change refused or recorded as any other), whatever the world size is now."""
    if ckpt is None or cfg.micro_batch is not None:
        return d
    return replace(d, micro_batch=ckpt["position"]["micro_batch"])


def restore(ckpt: dict, model, optimizer, scaler, changes: list[dict]) -> Progress:
    """Load a checkpoint's state into the freshly built training state; its progress, with
    the flag changes of this resume recorded after the earlier ones."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    checkpoint.set_rng_state(ckpt["rng"], model)
    return Progress(
        epoch=ckpt["epoch"],
        steps_done=ckpt["steps_done"],
        totals=ckpt["totals"],
        seconds=ckpt["seconds"],
        history=tuple(ckpt["history"]),
        best_top1=ckpt["best_top1"],
        best_weights=ckpt["best_weights"],
        run_seconds=ckpt["run_seconds"],
        changes=(*ckpt["changes"], *changes),
        feed=ckpt["feed"],
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
