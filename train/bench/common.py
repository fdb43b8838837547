"""What the benchmarks share: the shards they read (given, or the generated ImageNet-like
set), their timing between synchronizes, their flags, and writing their JSON (under
benchmarks/runs/ unless --json names a file) with the code version and the machine."""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import torch

from models.flags import Flag
from prep.atomic import write_atomic
from prep.flags import bench_json, positive
from prep.imagenet_like import IMAGENET_LIKE, IMAGENET_LIKE_SHARDS
from prep.provenance import code_version, machine_facts
from train.shards import Shards, is_shards_folder, open_shards

IMAGENET_LIKE_CLASSES, IMAGENET_LIKE_PER_CLASS = 40, 100  # prep's benchmark set, as bench-prep
# Older names: --shards was the shards folder, --fp32 turned mixed precision off.
ALIASES = {"--shards": "--data_dir", "--fp32": "--no_mixed_precision"}

GENERATED = Flag(
    "imagenet_like",
    bool,
    False,
    f"benchmark the generated ImageNet-like set ({IMAGENET_LIKE_CLASSES} classes of real-photo "
    f"JPEGs, the prep benchmark's, made once under {Path(IMAGENET_LIKE).parent}/) instead of "
    "--data_dir",
)
WARMUP = Flag("warmup", positive, 5, "batches before the timing starts", metavar="N")
BATCHES = Flag("batches", positive, 30, "timed batches", metavar="N")


def bench_device(args: argparse.Namespace) -> torch.device:
    """--device, else the GPU when there is one."""
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def bench_shards(args: argparse.Namespace) -> Shards:
    """The shards to read, opened once: --data_dir, or with --imagenet_like the generated
    set's shards (written on the first run). ShardsError names what is wrong."""
    if not args.imagenet_like:
        return open_shards(args.data_dir)
    from prep.build import PrepOptions, build
    from prep.imagenet_like import ensure_imagenet_like

    processes = os.cpu_count() or 1
    data = ensure_imagenet_like(
        Path(IMAGENET_LIKE), IMAGENET_LIKE_CLASSES, IMAGENET_LIKE_PER_CLASS, processes
    )
    if not is_shards_folder(IMAGENET_LIKE_SHARDS):
        build(data, IMAGENET_LIKE_SHARDS, PrepOptions(), workers=processes)
    return open_shards(IMAGENET_LIKE_SHARDS)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_rate(batches, device: torch.device, warmup: int, measure: int) -> tuple[float, int]:
    """Images/s over `measure` batches after `warmup` (a synchronize brackets the timing)."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(measure):
        x, _ = next(iterator)
        images += x.shape[0]
    synchronize(device)
    return images / (time.perf_counter() - start), images


def write_result(result: dict, given: str | None, name: str, device: torch.device) -> Path:
    """The benchmark's JSON, with the date, code version and machine: --json, else
    benchmarks/runs/NAME-cpu.json (or -gpu)."""
    kind = "gpu" if device.type == "cuda" else "cpu"
    record = {"benchmark": result["benchmark"], "date": date.today().isoformat()}
    record |= {"machine": machine_facts(device, world_size=1)} | result
    record["code_version"] = code_version()
    path = Path(bench_json(given, f"{name}-{kind}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path
