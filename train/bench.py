"""Benchmarks: `make bench-input` (the input pipeline), `make bench-train` (training) and
`make bench-checkpoint` (what a save of last.pt costs).

train: steady-state training images/s of one rank (forward, backward, optimizer step) with
synthetic input on the device and with DALI input, in the same run, for each stochastic-depth
mode asked for; the DALI / synthetic ratio tells whether input is the bottleneck. Peak GPU
memory per configuration.

input: steady-state images/s of the DALI train pipeline on the device it would train on,
against, in the same run, on the same shards and with the same number of CPU workers, the
pipeline users would otherwise pick: torchvision transforms (RandomResizedCrop, flip,
ColorJitter, normalize) on PIL images in a torch DataLoader (shards read with webdataset).

checkpoint: seconds to save the trainer's last.pt (weights, momentum, scaler, RNG states,
config; the average too with --ema) as the trainer does (torch.save, fsync, rename), against,
in the same run, a bare write + fsync of as many bytes to the same folder; and what share of
a run's time a save every M minutes costs (--checkpoint_every_minutes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from datetime import date
from pathlib import Path

import torch

from models import SD_MODES, STAGE_BLOCKS, VARIANTS
from prep.atomic import write_atomic
from prep.flags import FlagParser
from prep.provenance import code_version, machine_facts
from train.data import AUTO_AUGMENTS, IMAGENET_MEAN, IMAGENET_STD, PipelineKnobs, make_loader
from train.shards import Shards, is_shards_folder, open_shards, train_counts

DEFAULT_DATA = "benchmarks/data/imagenet-like"
DEFAULT_SHARDS = "benchmarks/data/imagenet-like-shards"
# Old names: --shards was the shards folder, --fp32 turned mixed precision off.
ALIASES = {"--shards": "--data_dir", "--fp32": "--no_mixed_precision"}


def ensure_shards(data_dir: str | None, workers: int) -> Shards:
    """The given shards, or shards of the prep benchmark's ImageNet-like set (made once)."""
    if data_dir:
        return open_shards(data_dir)
    from prep.build import PrepOptions, build
    from prep.imagenet_like import ensure_imagenet_like

    data = ensure_imagenet_like(Path(DEFAULT_DATA), 40, 100, workers)
    if not is_shards_folder(DEFAULT_SHARDS):
        build(data, DEFAULT_SHARDS, PrepOptions(), workers=workers)
    return open_shards(DEFAULT_SHARDS)


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


def torchvision_augmentation(auto_augment: str, ra_ops: int, ra_magnitude: int):
    """torchvision's counterpart of the DALI pipeline's augmentation after the crop and flip:
    our colour jitter without an automatic augmentation (as the DALI pipeline's default),
    TrivialAugmentWide or RandAugment instead of it (as torchvision's recipe)."""
    import torchvision.transforms as T

    if auto_augment == "ta_wide":
        return T.TrivialAugmentWide()
    if auto_augment == "rand_augment":
        return T.RandAugment(num_ops=ra_ops, magnitude=ra_magnitude)
    return T.ColorJitter(brightness=0.4, contrast=0.2, saturation=0.2)


def dataloader_batches(
    shards: Shards, batch: int, workers: int, image_size: int, augment: str = "none",
    ra: tuple[int, int] = (PipelineKnobs.ra_ops, PipelineKnobs.ra_magnitude),
):  # fmt: skip
    """The usual alternative: webdataset + torchvision transforms on PIL + DataLoader."""
    import torchvision.transforms as T
    import webdataset as wds

    urls, _ = shards.paths("train")
    transform = T.Compose(
        [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            torchvision_augmentation(augment, *ra),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = (
        wds.WebDataset(urls, shardshuffle=100, nodesplitter=None, empty_check=False)
        .repeat()
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", "cls")
        .map_tuple(transform, int)
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, num_workers=workers, pin_memory=torch.cuda.is_available()
    )


def dali_batches(
    shards: Shards, batch: int, workers: int, image_size: int, device, dtype, **knobs
):  # fmt: skip
    loader = make_loader(
        shards,
        "train",
        batch_size=batch,
        image_size=image_size,
        device=device,
        dtype=dtype,
        num_threads=workers,
        **knobs,
    )
    while True:  # epoch after epoch
        yield from loader


INPUT_LABELS = {
    "dali": "DALI train pipeline on the {where}",
    "dataloader": "torchvision + PIL in a DataLoader",
    "dali_auto": "DALI, {augment} on the {where}",
    "dataloader_auto": "DataLoader, torchvision's {augment}",
}


def bench_input(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    shards = ensure_shards(args.data_dir, args.workers)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    size, batch, workers, augment = args.image_size, args.batch, args.workers, args.auto_augment
    ra = (args.ra_ops, args.ra_magnitude)
    contenders = {
        "dali": lambda: dali_batches(shards, batch, workers, size, device, dtype),
        "dataloader": lambda: dataloader_batches(shards, batch, workers, size),
    }
    if augment != "none":  # as the accurate recipe: no colour jitter, the augmentation instead
        knobs = {"auto_augment": augment, "color_jitter": False, "ra_ops": ra[0]}
        knobs["ra_magnitude"] = ra[1]
        contenders["dali_auto"] = lambda: dali_batches(
            shards, batch, workers, size, device, dtype, **knobs
        )
        contenders["dataloader_auto"] = lambda: dataloader_batches(
            shards, batch, workers, size, augment, ra
        )
    rows = {}
    for name, make in contenders.items():
        rate, images = steady_rate(make(), device, args.warmup, args.batches)
        rows[name] = {"images_per_s": round(rate, 1), "images_timed": images}
    ratios = {"dali/dataloader": rows["dali"]["images_per_s"] / rows["dataloader"]["images_per_s"]}
    if augment != "none":
        auto = {k: rows[k]["images_per_s"] for k in ("dali_auto", "dataloader_auto")}
        ratios["dali_auto/dataloader_auto"] = auto["dali_auto"] / auto["dataloader_auto"]
        ratios["dali_auto/dali"] = auto["dali_auto"] / rows["dali"]["images_per_s"]
        ratios["dataloader_auto/dataloader"] = (
            auto["dataloader_auto"] / rows["dataloader"]["images_per_s"]
        )
    where = "GPU (mixed decoder)" if device.type == "cuda" else "CPU"
    print(f"\nbench-input: {shards.folder}, batch {batch}, {size}px, {workers} CPU workers")
    print(f"{'pipeline':<48}{'images/s':>10}")
    for name, row in rows.items():
        label = INPUT_LABELS[name].format(where=where, augment=augment)
        print(f"{label:<48}{row['images_per_s']:>10.0f}")
    for name, ratio in ratios.items():
        print(f"{name.replace('_auto', f' + {augment}')}: {ratio:.2f}x")
    return {
        "benchmark": "input",
        "date": date.today().isoformat(),
        "machine": machine_facts(device, world_size=1),
        "data_dir": str(shards.folder),
        "batch": args.batch,
        "image_size": args.image_size,
        "workers": args.workers,
        "auto_augment": augment,
        "warmup_batches": args.warmup,
        "timed_batches": args.batches,
        "results": rows,
        "ratio": round(ratios["dali/dataloader"], 3),
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }


def time_training(cfg, steps: int, warmup: int, shards: Shards | None) -> dict:
    """Images/s of train_step over `steps` steps after `warmup`, timed between synchronizes."""
    from train.config import derive
    from train.ema import build_average, step_decay
    from train.inputs import loader_kwargs, synthetic_batches
    from train.loop import train_step
    from train.model import standalone_run

    d = derive(cfg, 0, 1, 0)
    num_classes = train_counts(shards)[1]  # with synthetic input (None): ImageNet's
    run = standalone_run(cfg, d, num_classes, steps)
    if cfg.ema:  # the average is updated inside train_step, after the optimizer step
        run.ema = build_average(run.model, step_decay(cfg.ema_halflife, 5005))
    model = run.model
    if shards is None:
        batches = synthetic_batches(d, warmup + steps, cfg.image_size, num_classes, cfg.seed)
    else:

        def endless():
            epoch = 0
            while True:
                yield from make_loader(
                    shards, "train", epoch=epoch, **loader_kwargs(cfg, d, cfg.image_size)
                )
                epoch += 1

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
    import torch.nn.functional as F

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
    from train.ema import update_average

    synchronize(d.device)
    start = time.perf_counter()
    for _ in range(repeats):
        update_average(run.ema)
    synchronize(d.device)
    return 1000 * (time.perf_counter() - start) / repeats


def bench_train(args: argparse.Namespace) -> dict:
    from train.config import TrainConfig

    device = torch.device(args.device)
    shards = ensure_shards(args.data_dir, args.workers)
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
            no_mixed_precision=args.no_mixed_precision,
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
    precision = "fp32" if args.no_mixed_precision or device.type == "cpu" else "bf16 AMP"
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
        "date": date.today().isoformat(),
        "machine": machine_facts(device, world_size=1),
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
    from models.flops import training_flops

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


def bench_checkpoint(args: argparse.Namespace) -> dict:
    import statistics
    import tempfile

    from train.checkpoint import Progress, save, training_state
    from train.config import TrainConfig, derive
    from train.ema import build_average, step_decay
    from train.model import standalone_run
    from train.optimizer import add_momentum_buffers

    cfg = TrainConfig(depth=args.depth, variant=args.variant, ema=args.ema, device=args.device)
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
            save(target, training_state(run, Progress(), 1000))
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
    print(f"\nbench-checkpoint: {what} last.pt, {size / 1e6:.0f} MB, on {args.device}, into "
          f"{folder}, median of {args.rounds}")  # fmt: skip
    print(f"save as the trainer does: {seconds:.2f} s; bare write + fsync: {floor:.2f} s "
          f"(save / bare write: {seconds / floor:.2f}x)")  # fmt: skip
    shares = {m: seconds / (60 * m) for m in (1, 2, 5, 10, 30)}
    print("share of the run's time, a save every M minutes: "
          + ", ".join(f"{m} min {100 * s:.2f}%" for m, s in shares.items()))  # fmt: skip
    return {
        "benchmark": "checkpoint",
        "date": date.today().isoformat(),
        "machine": machine_facts(torch.device(args.device), 1),
        "depth": args.depth,
        "ema": args.ema,
        "bytes": size,
        "save_seconds": [round(s, 3) for s in saves],
        "bare_write_seconds": [round(s, 3) for s in floors],
        "share_by_minutes": {m: round(s, 5) for m, s in shares.items()},
    }


def build_parser() -> argparse.ArgumentParser:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = FlagParser(
        prog="python -m train.bench", description=__doc__.split("\n")[0], aliases=ALIASES
    )
    p.add_argument("what", choices=["input", "train", "checkpoint"], help="which benchmark")
    p.add_argument(
        "--data_dir", help="shards folder (default: generate the ImageNet-like set and its shards)"
    )
    p.add_argument("--device", default=default_device, help=f"default: {default_device}")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="input: DALI CPU threads, and as many DataLoader worker processes; train: DALI "
        "CPU threads",
    )
    p.add_argument(
        "--batch", type=int, help="images per step (default: 256 on a GPU, 64 on the CPU)"
    )
    p.add_argument("--image_size", type=int, help="default 224 (bench-train on a CPU: 128)")
    p.add_argument(
        "--image_sizes",
        help="train: several resolutions in one run, e.g. 128,160,192,224; each one's time per "
        "image is printed against the largest, beside the FLOPs ratio",
    )
    p.add_argument(
        "--ema",
        action="store_true",
        help="train: with --ema; times its update too, and its cost per step at --ema_every 1 "
        "and 32",
    )
    p.add_argument(
        "--blurpool", action="store_true", help="train: times BlurPool and without in one run"
    )
    add_augmentation_flags(p)
    p.add_argument("--warmup", type=int, default=5, help="batches before timing")
    p.add_argument("--batches", type=int, default=30, help="timed batches")
    p.add_argument("--json", help="where to write the JSON (default: benchmarks/results/...)")
    p.add_argument("--depth", type=int, default=50, choices=sorted(STAGE_BLOCKS), help="depth")
    p.add_argument("--variant", default="preact", choices=VARIANTS, help="train, checkpoint")
    add_sd_flags(p)
    p.add_argument("--compile", action="store_true", help="train: torch.compile the model")
    p.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "lars"],
        help="train: lars times LARS and fused SGD in the same run, and their ratio",
    )
    p.add_argument(
        "--no_mixed_precision", action="store_true", help="train: float32 (default: bf16 AMP)"
    )
    p.add_argument("--rounds", type=int, default=5, help="checkpoint: saves timed")
    p.add_argument("--out", default="results", help="checkpoint: the folder saved into")
    return p


def add_augmentation_flags(p: argparse.ArgumentParser) -> None:
    """The trainer's automatic-augmentation knobs, with its choices and defaults."""
    knobs = PipelineKnobs()
    p.add_argument(
        "--auto_augment",
        default=knobs.auto_augment,
        choices=AUTO_AUGMENTS,
        help="input: also times DALI with this augmentation (no colour jitter, as the accurate "
        "recipe) against torchvision's TrivialAugmentWide / RandAugment in the DataLoader",
    )
    p.add_argument(
        "--ra_ops", type=int, default=knobs.ra_ops, help="input: rand_augment's operations"
    )
    p.add_argument(
        "--ra_magnitude",
        type=int,
        default=knobs.ra_magnitude,
        help="input: rand_augment's magnitude",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 256 if args.device.startswith("cuda") else 64
    if args.image_size is None:
        args.image_size = 224 if args.device.startswith("cuda") or args.what == "input" else 128
    sizes = args.image_sizes.split(",") if args.image_sizes else [args.image_size]
    args.image_sizes = [int(s) for s in sizes]
    args.sd_modes = sd_modes_of(p, args)
    return args


def add_sd_flags(p: argparse.ArgumentParser) -> None:
    """Stochastic depth as the trainer names it (--sd, --sd_mode, --pL), or several modes."""
    p.add_argument(
        "--sd",
        type=sd_flag,
        metavar="{0,1}",
        help="train: stochastic depth 1 on (in --sd_mode), 0 off, as in the trainer (default: "
        "each of --sd_modes)",
    )
    p.add_argument(
        "--sd_mode",
        default="batch",
        choices=[m for m in SD_MODES if m != "off"],
        help="train: the mode of --sd 1",
    )
    p.add_argument(
        "--sd_modes",
        default="off",
        help="train: stochastic-depth modes to time in one run, e.g. off,batch,sample (each "
        "against off)",
    )
    p.add_argument("--pL", type=float, default=0.5, help="train: survival of the last block")


def sd_flag(text: str) -> int:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: --sd is 0 or 1, as in the trainer; several modes to time are "
            "--sd_modes off,batch,sample"
        )
    return int(text)


def sd_modes_of(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The modes to time: --sd_modes, or the one that --sd and --sd_mode name."""
    modes = [m.strip() for m in args.sd_modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in SD_MODES]
    if unknown:
        p.error(f"--sd_modes: unknown {', '.join(unknown)}; choose from {', '.join(SD_MODES)}")
    if args.sd is not None and args.sd_modes != "off":
        p.error("--sd and --sd_modes both choose the modes: give one of them")
    if args.sd is not None:
        return [args.sd_mode if args.sd else "off"]
    return modes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = {"input": bench_input, "train": bench_train, "checkpoint": bench_checkpoint}
    result = bench[args.what](args) | {"code_version": code_version()}
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    name = args.what if args.what == "input" else f"{args.what}-rn{args.depth}"
    path = Path(args.json or f"benchmarks/results/{name}-{kind}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
