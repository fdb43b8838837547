"""make bench-checkpoint: seconds to save the trainer's last.pt (weights, momentum, scaler, RNG
states, config; the average too with --ema) as the trainer does (torch.save, fsync, rename),
against, in the same run, a bare write + fsync of as many bytes to the same folder; and what
share of a run's time a save every M minutes costs (--checkpoint_every_minutes)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.flags import Flag, FlagParser
from prep.flags import JSON, ROUNDS
from train.checkpoint import save, training_state
from train.config import TrainConfig, derive, train_flags
from train.ema import build_average, step_decay
from train.model import standalone_run
from train.optimizer import add_momentum_buffers
from train.state import Progress

OUT = Flag("out", str, "results", "the folder saved into (a temporary folder inside it)")


def bench_checkpoint(args: argparse.Namespace, device: torch.device) -> dict:
    cfg = TrainConfig(depth=args.depth, variant=args.variant, ema=args.ema, device=str(device))
    d = derive(cfg, 0, 1, 0)
    run = standalone_run(cfg, d, 1000)
    add_momentum_buffers(run.optimizer)  # as after the first step: the momentum is saved too
    if cfg.ema:
        run.ema = build_average(run.model, step_decay(cfg.ema_halflife, 5005))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    saves, floors = [], []
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        target = Path(tmp) / "last.pt"
        for _ in range(args.rounds):
            start = time.perf_counter()
            save(target, training_state(run, Progress()))
            saves.append(time.perf_counter() - start)
            size = target.stat().st_size
            blob = os.urandom(size)
            start = time.perf_counter()
            with open(Path(tmp) / "floor.bin", "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            floors.append(time.perf_counter() - start)
    seconds, floor = statistics.median(saves), statistics.median(floors)
    what = f"ResNet-{args.depth}{' + EMA' if args.ema else ''}"
    print(f"\nbench-checkpoint: {what} last.pt, {size / 1e6:.0f} MB, on {device}, into "
          f"{folder}, median of {args.rounds}")  # fmt: skip
    print(f"save as the trainer does: {seconds:.2f} s; bare write + fsync: {floor:.2f} s "
          f"(save / bare write: {seconds / floor:.2f}x)")  # fmt: skip
    shares = {m: seconds / (60 * m) for m in (1, 2, 5, 10, 30)}
    print("share of the run's time, a save every M minutes: "
          + ", ".join(f"{m} min {100 * s:.2f}%" for m, s in shares.items()))  # fmt: skip
    return {
        "benchmark": "checkpoint",
        "depth": args.depth,
        "ema": args.ema,
        "bytes": size,
        "save_seconds": [round(s, 3) for s in saves],
        "bare_write_seconds": [round(s, 3) for s in floors],
        "share_by_minutes": {m: round(s, 5) for m, s in shares.items()},
    }


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.bench checkpoint",
        description=__doc__.split(": ", 1)[1].replace("\n", " "),
    )
    flags = train_flags()
    p.add(flags["depth"], flags["variant"], flags["ema"], flags["device"], ROUNDS, OUT, JSON)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
