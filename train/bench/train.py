"""make bench-train: steady-state training images/s of one rank (forward, backward, optimizer
step) with synthetic input on the device and with DALI input, in the same run, for each
stochastic-depth mode, resolution, optimizer and BlurPool setting asked for; the DALI /
synthetic ratio tells whether input is the bottleneck. Peak GPU memory per configuration.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from models import SD_MODES
from models.flags import Flag, FlagParser
from models.flops import training_flops
from prep.flags import JSON
from train.bench.common import ALIASES, BATCHES, GENERATED, WARMUP, synchronize
from train.config import TrainConfig, derive, train_flags
from train.data import dali_threads
from train.ema import build_average, step_decay, update_average
from train.inputs import synthetic_batches, train_data
from train.loop import train_step
from train.model import standalone_run
from train.schedule import plan_steps
from train.shards import Shards, train_counts

IMAGE_SIZES = Flag(
    "image_sizes",
    str,
    None,
    "several train resolutions in one run, e.g. 128,160,192,224 (instead of --image_size); "
    "each one's time per image is printed against the largest's, beside the FLOPs ratio",
    metavar="N,...",
)
SD_MODES_FLAG = Flag(
    "sd_modes",
    str,
    "off",
    "stochastic-depth modes to time in one run, e.g. off,batch,sample, each against off "
    "(instead of --sd and --sd_mode)",
    metavar="MODE,...",
)


def time_training(cfg, steps: int, warmup: int, shards: Shards | None) -> dict:
    """Images/s of train_step over `steps` steps after `warmup`, timed between synchronizes."""
    d = derive(cfg, 0, 1, 0)
    num_classes = train_counts(shards)[1]  # with synthetic input (None): ImageNet's
    run = standalone_run(cfg, d, num_classes, steps)
    if cfg.ema:  # the average is updated inside train_step, after the optimizer step
        run.ema = build_average(run.model, step_decay(cfg.ema_halflife, 5005))
    model = run.model
    if shards is None:
        batches = synthetic_batches(
            d, d.micro_batch, warmup + steps, cfg.image_size, num_classes, cfg.seed
        )  # fmt: skip
    else:  # the trainer's own reader, epoch after epoch

        def endless():
            data = train_data(cfg, d, shards, plan_steps(cfg, d, train_counts(shards)[0]), (0, 0))
            for epoch in itertools.count():
                yield from ((images, labels) for images, labels, _ in data.epoch(epoch))

        batches = endless()
    model.train()
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    iterator = iter(batches)
    for _ in range(warmup):
        train_step(run, *next(iterator), boundary=True)
    synchronize(d.device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(iterator)
        train_step(run, x, y, boundary=True)
        images += x.shape[0]
    synchronize(d.device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(d.device) / 2**30 if d.device.type == "cuda" else None
    return {
        "images_per_s": round(images / seconds, 1),
        "step_ms": round(1000 * seconds / steps, 2),
        "peak_gib": None if peak is None else round(peak, 2),
        "ema_update_ms": None if run.ema is None else round(time_ema_update(run, d, steps), 3),
        "optimizer_step_ms": round(time_optimizer_step(run, d, x, y, steps), 3),
    }


def time_optimizer_step(run, d, images, labels, repeats: int) -> float:
    """Milliseconds of one optimizer step alone, on one batch's gradients (kept for all the
    repeats), between synchronizes: the share of a step that SGD or LARS takes."""
    with torch.autocast(d.device.type, dtype=d.amp_dtype, enabled=d.amp):
        F.cross_entropy(run.train_model(images), labels).backward()
    synchronize(d.device)
    start = time.perf_counter()
    for _ in range(repeats):
        run.optimizer.step()
    synchronize(d.device)
    run.optimizer.zero_grad(set_to_none=True)
    return 1000 * (time.perf_counter() - start) / repeats


def time_ema_update(run, d, repeats: int) -> float:
    """Milliseconds of one EMA update alone (its share of a step), between synchronizes."""
    synchronize(d.device)
    start = time.perf_counter()
    for _ in range(repeats):
        update_average(run.ema)
    synchronize(d.device)
    return 1000 * (time.perf_counter() - start) / repeats


def bench_train(args: argparse.Namespace, shards: Shards, device: torch.device) -> dict:
    rows = []
    optimizers = ["sgd", "lars"] if args.optimizer == "lars" else ["sgd"]  # LARS against SGD
    blurpools = [False, True] if args.blurpool else [False]  # BlurPool against without
    product = itertools.product(args.image_sizes, args.sd_modes, optimizers, blurpools)
    for size, sd_mode, optimizer, blurpool in product:
        cfg = TrainConfig(
            data_dir=str(shards.folder),
            depth=args.depth,
            variant=args.variant,
            sd=int(sd_mode != "off"),
            sd_mode=sd_mode if sd_mode != "off" else "batch",
            pL=args.pL,
            batch=args.batch,
            image_size=size,
            workers=args.workers,
            compile=args.compile,
            mixed_precision=args.mixed_precision,
            device=str(device),
            seed=0,
            ema=args.ema,
            optimizer=optimizer,
            lr=0.1 * args.batch / 256,  # the step's cost does not depend on it
            blurpool=blurpool,
        )
        synthetic = time_training(cfg, args.batches, args.warmup, None)
        dali = time_training(cfg, args.batches, args.warmup, shards)
        ratio = round(dali["images_per_s"] / synthetic["images_per_s"], 3)
        rows.append(
            {"image_size": size, "sd": sd_mode, "optimizer": optimizer, "blurpool": blurpool}
            | {"synthetic": synthetic, "dali": dali, "dali_over_synthetic": ratio}
        )
    precision = "bf16 AMP" if args.mixed_precision and device.type == "cuda" else "fp32"
    sizes = ",".join(str(s) for s in args.image_sizes)
    print(
        f"\nbench-train: ResNet-{args.depth} ({args.variant}), batch {args.batch}, {sizes}px, "
        f"{precision}, {'compiled' if args.compile else 'eager'}, on {device}"
    )
    print_train_table(rows)
    resolutions = None
    if len(args.image_sizes) > 1:
        resolutions = resolution_ratios(rows, args.depth, args.variant)
    return {
        "benchmark": "train",
        "depth": args.depth,
        "variant": args.variant,
        "pL": args.pL,
        "batch": args.batch,
        "image_sizes": args.image_sizes,
        "precision": precision,
        "compile": args.compile,
        "ema": args.ema,
        "blurpool": args.blurpool,
        "warmup_steps": args.warmup,
        "timed_steps": args.batches,
        "rows": rows,
        "resolutions": resolutions,
    }


def resolution_ratios(rows: list[dict], depth: int, variant: str) -> list[dict]:
    """Each resolution's time per image against the largest one's, beside its FLOPs ratio
    (the time a step would take if time followed FLOPs), for the first SD mode."""
    first = [r for r in rows if same(r, rows[0], "sd", "optimizer", "blurpool")]
    largest = max(first, key=lambda r: r["image_size"])
    flops = {
        r["image_size"]: training_flops(depth, variant, r["image_size"], 1000)[0] for r in first
    }
    print(f"\nper image, against {largest['image_size']} px (SD {largest['sd']}):")
    print(f"{'px':>5}{'FLOPs':>8}{'time, synthetic':>17}{'time, DALI':>12}")
    out = []
    for r in first:
        row = {
            "image_size": r["image_size"],
            "flops_ratio": round(flops[r["image_size"]] / flops[largest["image_size"]], 3),
            **{
                f"time_ratio_{k}": round(largest[k]["images_per_s"] / r[k]["images_per_s"], 3)
                for k in ("synthetic", "dali")
            },
        }
        print(
            f"{row['image_size']:>5}{row['flops_ratio']:>8.2f}"
            f"{row['time_ratio_synthetic']:>17.2f}{row['time_ratio_dali']:>12.2f}"
        )
        out.append(row)
    return out


def print_train_table(rows: list[dict]) -> None:
    """One line per stochastic-depth mode (and optimizer), then each mode's ratio to SD off
    and LARS's step time against fused SGD's."""
    header = ("px", "stochastic depth", "synthetic img/s", "DALI img/s", "DALI/synth", "peak GiB")
    print(
        f"{header[0]:>5}  {header[1]:<18}{header[2]:>16}{header[3]:>12}{header[4]:>12}"
        f"{header[5]:>10}"
    )
    for r in rows:
        peak = r["synthetic"]["peak_gib"]
        label = r["sd"] + (", LARS" if r["optimizer"] == "lars" else "")
        label += ", BlurPool" if r["blurpool"] else ""
        print(
            f"{r['image_size']:>5}  {label:<18}{r['synthetic']['images_per_s']:>16.1f}"
            f"{r['dali']['images_per_s']:>12.1f}{r['dali_over_synthetic']:>12.2f}"
            f"{'-' if peak is None else f'{peak:.1f}':>10}"
        )
        ema = r["synthetic"]["ema_update_ms"]
        if ema is not None:
            step = r["synthetic"]["step_ms"]
            print(
                f"       EMA update {ema:.2f} ms: per step {ema / step:.1%} of a {step:.1f} ms "
                f"step at --ema_every 1, {ema / 32 / step:.2%} at --ema_every 32"
            )
    print_ratios(rows)


def partner(rows: list[dict], r: dict, **fixed) -> dict | None:
    """The row equal to r but for `fixed` (e.g. sd="off"): what r is compared with."""
    keys = [k for k in ("image_size", "sd", "optimizer", "blurpool") if k not in fixed]
    return next((b for b in rows if same(b, r, *keys) and same(b, fixed, *fixed)), None)


def print_ratios(rows: list[dict]) -> None:
    """Each SD mode against SD off, BlurPool against without, LARS against fused SGD."""
    for r in rows:
        step = r["synthetic"]["step_ms"]
        base = partner(rows, r, sd="off")
        if base is not None and r is not base and r["optimizer"] == "sgd":
            gain = r["synthetic"]["images_per_s"] / base["synthetic"]["images_per_s"]
            print(f"{r['image_size']} px: SD {r['sd']} / SD off (synthetic): {gain:.2f}x")
        plain = partner(rows, r, blurpool=False)
        if plain is not None and r["blurpool"]:
            print(
                f"{r['image_size']} px, SD {r['sd']}: BlurPool step / plain step (synthetic): "
                f"{step / plain['synthetic']['step_ms']:.3f}x ({step:.1f} against "
                f"{plain['synthetic']['step_ms']:.1f} ms)"
            )
        sgd = partner(rows, r, optimizer="sgd")
        if sgd is not None and r["optimizer"] == "lars":
            alone = [x["synthetic"]["optimizer_step_ms"] for x in (r, sgd)]
            print(
                f"{r['image_size']} px, SD {r['sd']}: LARS step / fused SGD step (synthetic): "
                f"{step / sgd['synthetic']['step_ms']:.3f}x ({step:.1f} against "
                f"{sgd['synthetic']['step_ms']:.1f} ms); the optimizer alone: LARS "
                f"{alone[0]:.1f} ms, fused SGD {alone[1]:.1f} ms, LARS adds "
                f"{(alone[0] - alone[1]) / sgd['synthetic']['step_ms']:.1%} of a step"
            )


def same(a: dict, b: dict, *keys: str) -> bool:
    return all(a[k] == b[k] for k in keys)


def sd_modes_of(p: FlagParser, args: argparse.Namespace) -> list[str]:
    """The modes to time: --sd_modes, or the one that --sd and --sd_mode name."""
    modes = [m.strip() for m in args.sd_modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SD_MODES]
    if unknown:
        p.error(f"--sd_modes: unknown {', '.join(unknown)}; choose from {', '.join(SD_MODES)}")
    if "sd" in p.given and "sd_modes" in p.given:
        p.error("--sd and --sd_modes both choose the modes: give one of them")
    if "sd" in p.given:
        return [args.sd_mode if args.sd else "off"]
    return modes


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.bench train",
        aliases=ALIASES,
        description=__doc__.split("\n\n")[0].split(": ", 1)[1].replace("\n", " ")
        + " --blurpool times BlurPool and without it, --optimizer lars LARS and fused SGD, "
        "--ema adds the update's cost per step. On a CPU, a smaller --batch and --image_size "
        "(e.g. 16 and 128) keep it short.",
    )
    flags = train_flags()
    p.add(flags["data_dir"], GENERATED, flags["device"], flags["workers"], flags["batch"])
    p.add(flags["image_size"], IMAGE_SIZES, flags["depth"], flags["variant"], flags["sd"])
    p.add(flags["sd_mode"], SD_MODES_FLAG, flags["pL"], flags["blurpool"], flags["ema"])
    p.add(flags["compile"], flags["optimizer"], flags["mixed_precision"], WARMUP, BATCHES, JSON)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    sizes = args.image_sizes.split(",") if args.image_sizes else [args.image_size]
    args.image_sizes = [int(s) for s in sizes]
    args.sd_modes = sd_modes_of(p, args)
    args.workers = dali_threads(args.workers)
    return args
