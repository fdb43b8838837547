"""What a run writes and says beside its checkpoints: config.json, training_history.csv,
training_summary.csv/.json, TensorBoard events, and the lines it prints (rank 0 only). Every
file is written whole or not at all (prep.atomic)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tqdm import tqdm

from prep.atomic import write_atomic
from prep.provenance import code_version, machine_facts
from train.config import (
    DEFAULT_WARMUP_EPOCHS,
    Derived,
    TrainConfig,
    changed_since,
    started_with,
    to_dict,
)
from train.model import parameter_count
from train.schedule import train_resolution
from train.state import Progress, Run

HISTORY_FIELDS = [
    "epoch",
    "lr",
    "train_res",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_loss_ema",
    "val_top1_ema",
    "val_top5_ema",
    "epoch_seconds",
    "images_per_second",
    "run_seconds",
    "world_size",
]


def say(d: Derived | None, *lines: str) -> None:
    """Print on rank 0 only (tqdm-safe)."""
    if d is None or d.rank == 0:
        for line in lines:
            tqdm.write(line)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def write_history(out: Path, history: list[dict]) -> None:
    write_atomic(out / "training_history.csv", csv_text(history, HISTORY_FIELDS))


def best_top1_of(row: dict) -> tuple[float | None, str]:
    """(the better val top-1 of an epoch's live and averaged weights, which: live or ema)."""
    live, ema = row.get("val_top1"), row.get("val_top1_ema")
    if ema is not None and (live is None or ema > live):
        return ema, "ema"
    return live, "live"


def target_row(history, target_top1: float | None) -> dict | None:
    """The first epoch whose evaluation reached --target_top1 (percent), live or EMA weights."""
    if target_top1 is None:
        return None
    tops = ((r, best_top1_of(r)[0]) for r in history)
    return next((r for r, top1 in tops if top1 is not None and 100 * top1 >= target_top1), None)


def summarize(history, *, parameters: int, total_seconds: float, config: dict, changes=()) -> dict:
    """best_*: the epoch whose live or averaged (--ema) weights scored best, and which;
    target_*: the first epoch at --target_top1, and the run's time to it (null: never).
    `config`: the one the run trains with now; the summary records the one it started with
    and the changes since (--allow_changes)."""
    evaluated = [r for r in history if r.get("val_top1") is not None]
    best = max(evaluated, key=lambda r: best_top1_of(r)[0], default=None)
    final = evaluated[-1] if evaluated else None
    best_weights = best_top1_of(best)[1] if best else None
    suffix = "_ema" if best_weights == "ema" else ""
    reached = target_row(history, config["target_top1"])
    to_target = reached["run_seconds"] if reached else None
    return {
        "epochs_completed": len(history),
        "best_top1": best and best[f"val_top1{suffix}"],
        "best_top5": best and best[f"val_top5{suffix}"],
        "best_epoch": best and best["epoch"],
        "best_weights": best_weights,
        "final_top1": final and final["val_top1"],
        "final_top5": final and final["val_top5"],
        "final_top1_ema": final and final.get("val_top1_ema"),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "total_seconds": round(total_seconds, 1),
        "mean_images_per_second": round(
            sum(r["images_per_second"] for r in history) / max(1, len(history)), 1
        ),
        "target_top1": config["target_top1"],
        "target_epoch": reached and reached["epoch"],
        "time_to_target_s": None if to_target is None else round(to_target, 1),
        "parameters": parameters,
        "config": started_with(config, list(changes)),
        "changes": list(changes),
    }


def write_summary(out: Path, summary: dict) -> None:
    write_atomic(out / "training_summary.json", json.dumps(summary, indent=1) + "\n")
    flat = {k: v for k, v in summary.items() if k != "config"}
    flat.update({f"config.{k}": v for k, v in summary["config"].items() if k != "dali"})
    write_atomic(out / "training_summary.csv", csv_text([flat], list(flat)))


def write_config(out: Path, cfg: TrainConfig, d: Derived, derived: dict, changes=()) -> None:
    """config.json: the config the run started with and each change since (--allow_changes:
    epoch, step, flag, old, new), what was derived from the config it trains with now
    (`derived`: the values that the run derived beyond `d`), the code version, the machine."""
    record = {
        "config": started_with(to_dict(cfg), list(changes)),
        "changes": list(changes),
        "derived": {
            "lr": d.lr,
            "warmup_epochs": d.warmup_epochs,
            "micro_batch": d.micro_batch,
            "world_size": d.world_size,
            "amp": d.amp,
            "amp_dtype": str(d.amp_dtype) if d.amp else "float32",
            "channels_last": d.channels_last,
            "device": str(d.device),
            "train_resolution": {
                "min_res": d.min_res,
                "max_res": d.max_res,
                "start_ramp": d.start_ramp,
                "end_ramp": d.end_ramp,
            },
            "val_res": d.val_res,
            "lr_milestones": list(d.lr_milestones),
            **derived,
        },
        "code_version": code_version(),
        "machine": machine_facts(d.device, d.world_size),
    }
    write_atomic(out / "config.json", json.dumps(record, indent=1) + "\n")


def recorded_config(out: Path) -> dict | None:
    """The config (to_dict's) the run in `out` trains with, from its config.json: the one it
    started with and the changes since; None when the folder holds no run yet."""
    path = out / "config.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return changed_since(record["config"], record["changes"])


def samples_file(out: Path, epoch: int) -> Path:
    """--record_samples' file of `epoch` (counted from 0): OUT/samples/epoch-NNN.txt, NNN
    counted from 1 as the history counts."""
    return out / "samples" / f"epoch-{epoch + 1:03d}.txt"


def sample_recorder(run: Run, shards, progress: Progress):
    """--record_samples: what the epoch loop calls after every optimizer step it trains, to
    append the step's line (its index, then the keys of its samples over every rank,
    sorted) to the epoch's file; rank 0 writes, the other ranks have nothing to do. The
    files first lose what the run trained after the checkpoint it resumes from."""
    if run.d.rank != 0 or shards is None:
        return None
    trim_samples(run.out, progress.epoch, progress.steps_done)
    keys = shards.sample_keys("train")

    def record(epoch: int, step: int) -> None:
        names = sorted(keys[i] for i in run.data.step_ids(epoch, step))
        with open(samples_file(run.out, epoch), "a") as f:
            f.write(" ".join([str(step), *names]) + "\n")

    return record


def trim_samples(out: Path, epoch: int, steps_done: int) -> None:
    """Keep the lines of the steps before (epoch, steps_done), no later epoch's file."""
    (out / "samples").mkdir(exist_ok=True)
    for path in (out / "samples").glob("epoch-*.txt"):
        number = int(path.stem.split("-")[1]) - 1
        if number > epoch:
            path.unlink()
        elif number == epoch:
            lines = path.read_text().splitlines(keepends=True)
            write_atomic(path, "".join(ln for ln in lines if int(ln.split()[0]) < steps_done))


def fmt(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def run_line(cfg: TrainConfig, d: Derived, parameters: int, steps_per_epoch: int) -> str:
    """What is trained, where and how: the run's first line."""
    return (
        f"ResNet-{cfg.depth} ({cfg.variant}), stochastic depth {d.sd_mode}"
        + (f" (pL {cfg.pL})" if cfg.sd else "")
        + f", {parameters:,} parameters; "
        f"{d.world_size} x {d.device.type}, batch {cfg.batch} ({d.micro_batch} per rank"
        + (f" x {cfg.accum} accum" if cfg.accum > 1 else "")
        + f"), lr {d.lr:g}, "
        + (f"AMP {str(d.amp_dtype).split('.')[-1]}" if d.amp else "float32")
        + f", {steps_per_epoch} steps/epoch"
    )


def resolution_lines(d: Derived, epoch: int, first: bool) -> list[str]:
    """Progressive resizing: the train resolution at the start and whenever it changes."""
    size = train_resolution(d, epoch)
    if d.min_res == d.max_res or not (first or size != train_resolution(d, epoch - 1)):
        return []
    return [f"train resolution {size} px from epoch {epoch + 1} (evaluation at {d.val_res} px)"]


def epoch_line(row: dict, epochs: int) -> str:
    val = (
        f"val loss {row['val_loss']:.4f} top-1 {fmt(row['val_top1'])} top-5 {fmt(row['val_top5'])}"
        if "val_top1" in row
        else "no val"
    )
    if "val_top1_ema" in row:
        val += f" (EMA top-1 {fmt(row['val_top1_ema'])} top-5 {fmt(row['val_top5_ema'])})"
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} top-1 "
        f"{fmt(row['train_top1'])} | {val} | lr {row['lr']:.5f} | {row['epoch_seconds']:.1f} s, "
        f"{row['images_per_second']:.1f} img/s"
    )


def done_line(summary: dict, out: Path) -> str:
    which = " (EMA weights)" if summary["best_weights"] == "ema" else ""
    return (
        f"done: best top-1 {fmt(summary['best_top1'])}{which} at epoch {summary['best_epoch']}, "
        f"final top-1 {fmt(summary['final_top1'])}, top-5 {fmt(summary['final_top5'])}"
        f"{target_words(summary)}; outputs in {out}"
    )


def target_words(summary: dict) -> str:
    """--target_top1: where the run reached it and how long that took, or that it did not."""
    target = summary.get("target_top1")
    if target is None:
        return ""
    if summary["target_epoch"] is None:
        return f"; target top-1 {target:g}% not reached in {summary['epochs_completed']} epochs"
    seconds = summary["time_to_target_s"]
    spent = "" if seconds is None else f", {seconds / 60:.1f} min of training and evaluation"
    return f"; target top-1 {target:g}% reached at epoch {summary['target_epoch']}{spent}"


def announce(run: Run, shards_folder: Path | None, changes) -> None:
    """config.json, and the lines that say what this run trains and how."""
    cfg, d = run.cfg, run.d
    parameters = parameter_count(run.model)
    if d.rank == 0:
        write_config(
            run.out,
            cfg,
            d,
            {
                "steps_per_epoch": run.plan.steps_per_epoch,
                "parameters": parameters,
                "num_classes": run.num_classes,
                "data_dir_used": None if shards_folder is None else str(shards_folder),
                "ema_decay_per_step": None if run.ema is None else run.ema.decay,
            },
            changes,
        )
    say(d, run_line(cfg, d, parameters, run.plan.steps_per_epoch))
    if cfg.warmup_epochs is None and d.warmup_epochs < DEFAULT_WARMUP_EPOCHS:
        say(
            d,
            f"warmup: {d.warmup_epochs:g} epochs, a quarter of this {cfg.epochs}-epoch run (the "
            f"default {DEFAULT_WARMUP_EPOCHS:g} is for longer runs; --warmup_epochs sets it)",
        )


def run_summary(run: Run, progress: Progress) -> dict:
    return summarize(
        progress.history,
        parameters=parameter_count(run.model),
        total_seconds=run.run_seconds(),
        config=to_dict(run.cfg),
        changes=progress.changes,
    )


def finish(run: Run, progress: Progress) -> None:
    """Rank 0, after the last epoch (or the one that reached --target_top1): the
    hyperparameters with the results, the last line."""
    summary = run_summary(run, progress)
    run.board.hparams(
        {k: v for k, v in to_dict(run.cfg).items() if k not in ("dali",)},
        {"hparam/best_top1": summary["best_top1"], "hparam/final_top1": summary["final_top1"]},
    )
    say(run.d, done_line(summary, run.out))
