"""python -m train: the run, top to bottom. Check the flags and the shards, set up (ranks, RAM
cache, model, resume, outputs), then epoch after epoch train, evaluate, save and log, and at
the end the summary. The building blocks live in the files named for them
(docs/architecture.md lists them); nothing imports this file but train/__main__.py.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch.distributed as dist

from train.board import Board
from train.checkpoint import (
    CheckpointError,
    remove_stale_temporaries,
    save_position,
    save_training,
)
from train.config import (
    ConfigError,
    Derived,
    TrainConfig,
    check,
    data_problems,
    derive,
    parse_flags,
)
from train.data import DaliMissing, require_dali
from train.ema import build_average, step_decay
from train.environment import (
    ReplicaError,
    check_replicas,
    check_same_flags,
    dist_env,
    end_process_group,
    peer_failure_line,
    start_process_group,
)
from train.inputs import train_data, val_batches
from train.logs import (
    announce,
    best_top1_of,
    epoch_line,
    finish,
    resolution_lines,
    run_summary,
    sample_recorder,
    say,
    target_row,
    write_history,
    write_summary,
)
from train.loop import NonFiniteLoss, evaluate_live_and_average, train_one_epoch
from train.model import build_training
from train.plan import print_plan
from train.ram_cache import cache_shards, restart_follows
from train.resume import (
    ResumeError,
    checkpoint_to_resume,
    finished,
    restore,
    restore_average,
    resumed_micro_batch,
)
from train.schedule import evaluation_due, plan_steps, train_resolution
from train.shards import Shards, ShardsError, is_shards_folder, open_shards, train_counts
from train.signals import Interrupted, install_stop_handlers, stopped
from train.state import Progress, Run
from train.weights import start_from_weights


def main(argv: list[str] | None = None) -> int:
    cfg, contradictions = parse_flags(argv)
    rank, world_size, local_rank = dist_env()
    cached, code = None, None
    try:
        shards = checked_shards(cfg, world_size, contradictions)
        if cfg.dry_run:
            return print_plan(cfg, world_size, shards)
        if not cfg.synthetic:
            require_dali()
        d = derive(cfg, rank, world_size, local_rank)
        start_process_group(d, cfg.dist_timeout_minutes)
        check_same_flags(cfg, d)
        if cfg.cache and shards is not None:
            shards, cached = cache_shards(shards, d)
        code = train(cfg, d, shards)
        return code
    except (ConfigError, ShardsError, ResumeError, CheckpointError, DaliMissing) as e:
        code = failed(rank, e, 2)
        return code
    except (NonFiniteLoss, ReplicaError) as e:
        code = failed(rank, e, 3)
        return code
    except RuntimeError as e:  # a peer stopped answering (hung, stopped, died)
        line = peer_failure_line(e, rank, cfg.dist_timeout_minutes) if world_size > 1 else None
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 4
    finally:
        if cached is not None and not restart_follows(code):
            shutil.rmtree(cached, ignore_errors=True)
        end_process_group()


def checked_shards(cfg: TrainConfig, world_size: int, problems: list[str]) -> Shards | None:
    """The shards of --data_dir, read once, when every problem of the flags (`problems`: the
    contradictions among them) and the shards folder is ruled out (ConfigError names them
    all at once). None: ImageNet's counts, for --synthetic (which reads no data) and a
    --dry_run without shards."""
    shards = None
    try:
        if is_shards_folder(cfg.data_dir) or not (cfg.synthetic or cfg.dry_run):
            shards = open_shards(cfg.data_dir)
    except ShardsError as e:
        problems = problems + ([] if cfg.synthetic else [str(e)])
    check(cfg, world_size, problems + data_problems(cfg, shards))
    return shards


def failed(rank: int, error: Exception, code: int) -> int:
    if rank == 0:
        print(f"train: error: {error}", file=sys.stderr)
    return code


def train(cfg: TrainConfig, d: Derived, shards: Shards | None) -> int:
    out, digest = Path(cfg.out), "synthetic" if shards is None else shards.digest()
    train_images, num_classes = train_counts(shards)
    ckpt, changes = checkpoint_to_resume(cfg, d, out, num_classes, digest)
    if ckpt is not None and not changes and finished(ckpt, cfg):  # a rerun: nothing changes
        say(d, f"nothing to train: {out} holds this run, finished; its files are left as they are")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if d.rank == 0:
        remove_stale_temporaries(out)
    d = resumed_micro_batch(ckpt, cfg, d)  # the run's micro-batch cap, on any world size
    model, train_model, optimizer, scaler = build_training(cfg, d, num_classes)
    if ckpt is None and cfg.init_weights:
        say(d, start_from_weights(model, cfg, num_classes))
    progress = restore(ckpt, model, optimizer, scaler, changes) if ckpt else Progress()
    plan = plan_steps(cfg, d, train_images)
    data = train_data(cfg, d, shards, plan, (progress.epoch, progress.steps_done), progress.feed)
    ema = None
    if cfg.ema:  # from the resumed weights; then the checkpoint's average, if it holds one
        decay = step_decay(cfg.ema_halflife, plan.steps_per_epoch)
        ema = build_average(model, decay, cfg.ema_every)
        restore_average(ckpt, ema, d)
    # TensorBoard drops what a killed run wrote after the step it resumes from
    resumed_step = progress.epoch * plan.steps_per_epoch + progress.steps_done
    board = Board(out, d.rank == 0, resumed_step if ckpt else None)
    run = Run(cfg, d, model, train_model, optimizer, scaler, board, plan, out, num_classes, ema)
    run.data, run.shards_digest = data, digest
    record = sample_recorder(run, shards, progress) if cfg.record_samples else None
    install_stop_handlers(run)
    announce(run, None if shards is None else shards.folder, progress.changes)
    val = val_batches(cfg, d, shards)
    run.started_at = time.time() - progress.run_seconds  # the run clock goes on from there
    with contextlib.closing(run.board):  # flushes TensorBoard whatever happens
        first_epoch = progress.epoch
        for epoch in range(first_epoch, cfg.epochs):
            if target_row(progress.history, cfg.target_top1) is not None:
                break  # --target_top1 reached (maybe before a rerun of the finished run)
            say(d, *resolution_lines(d, epoch, first=epoch == first_epoch))
            try:
                row = train_one_epoch(
                    run,
                    data,
                    epoch,
                    start_step=progress.steps_done,
                    totals=progress.totals,
                    seconds_before=progress.seconds,
                    save_position=partial(save_position, run, progress, epoch),
                    record=record,
                )
            except Interrupted as stop:
                return stopped(run, epoch, stop, progress)
            if val is not None and evaluation_due(cfg, epoch):
                row.update(evaluate_live_and_average(run, val))
            row = {"epoch": epoch + 1, "train_res": train_resolution(d, epoch), **row}
            row["world_size"] = d.world_size
            row["run_seconds"] = run.run_seconds()
            progress = end_epoch(run, row, progress)
        if d.rank == 0:
            finish(run, progress)
    return 0


def end_epoch(run: Run, row: dict, progress: Progress) -> Progress:
    """After an epoch's training and evaluation: check that the ranks agree, then record it
    (history, last.pt and best.pt, CSV, summary, TensorBoard) and say it; the new progress."""
    cfg, d, epoch = run.cfg, run.d, row["epoch"] - 1
    if d.world_size > 1:
        row["replicas_identical"] = check_replicas(run.model, d, epoch)
    top1, weights = best_top1_of(row)
    improved = top1 is not None and top1 > progress.best_top1
    progress = replace(
        progress,
        epoch=epoch + 1,
        steps_done=0,
        totals=None,
        seconds=0.0,
        history=(*progress.history, row),
        feed=run.feed_state(),  # every rank: a collective
        **({"best_top1": top1, "best_weights": weights} if improved else {}),
    )
    if d.rank == 0:
        save_training(run, progress, best=improved)
        write_history(run.out, progress.history)
        write_summary(run.out, run_summary(run, progress))
        run.board.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch"}, epoch + 1)
    say(d, epoch_line(row, cfg.epochs))
    if d.world_size > 1:
        dist.barrier()
    return progress
