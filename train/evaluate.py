"""python -m train.evaluate: top-1, top-5 and loss of any weights on the val shards, or on
another split of them (--split: an evaluation set such as ImageNetV2), and the ReaL top-1
and top-5 of the val images (--real_labels).

The weights are one of this project's checkpoints (best.pt, last.pt: depth, variant, crop
size and precision are read from it), a run folder, an export of train.export (safetensors or
torchvision, with its config.json) or a bare state_dict (a torchvision resnet50 / 101 / 152
.pth, or this project's model saved alone): train.weights reads them. The evaluation is the
trainer's own: the same DALI val pipeline (shorter side to 256, centre crop 224:
torchvision's reference transform to the pixel), the same evaluation function, every val
image counted exactly once over the ranks under torchrun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from models import build_resnet
from models.flags import Flag, FlagParser
from prep.atomic import atomic_file, write_atomic
from prep.flags import JSON
from prep.provenance import code_version, machine_facts
from train.checkpoint import CheckpointError
from train.config import (
    ConfigError,
    Derived,
    TrainConfig,
    check,
    derive,
    from_dict,
    train_flags,
)
from train.data import DaliMissing, make_loader, require_dali
from train.environment import dist_env, end_process_group, start_process_group
from train.inputs import loader_kwargs
from train.loop import evaluate
from train.real_labels import (
    REAL_LABELS,
    RealLabelsError,
    read_real_labels,
    real_accuracy,
    real_correct,
)
from train.shards import Shards, ShardsError, open_shards
from train.weights import WEIGHTS, Weights, WeightsError, read_weights


class EvaluateError(Exception):
    """Weights or shards that cannot be evaluated; the message names the file and the fix."""


def split_images(shards: Shards, split: str) -> int:
    """The images of the split to evaluate (val, or an evaluation set beside it)."""
    if split not in shards.manifest["splits"]:
        known = ", ".join(shards.manifest["splits"])
        raise EvaluateError(f"--split {split}: {shards.folder} has no such split (it has {known})")
    images = shards.num_samples(split)
    if not images and split == "val":
        raise EvaluateError(
            f"{shards.folder} has no val split: make shards from a folder with val images "
            "(val/<wnid>/*.JPEG, or a flat val/ with its labels)"
        )
    if not images:
        raise EvaluateError(f"--split {split}: {shards.folder} holds no image of it")
    return images


def eval_config(args: argparse.Namespace, weights: Weights) -> TrainConfig:
    """The trainer's config for this evaluation: the checkpoint's (or the defaults), with the
    evaluation flags given here on top. --image_size without --val_res sets the crop, as in
    the trainer, where --val_res defaults to --image_size."""
    base = from_dict(weights.config) if weights.config else TrainConfig()
    given = args.given
    if "blurpool" in given and weights.config is not None and args.blurpool != base.blurpool:
        raise EvaluateError(
            f"--{'' if args.blurpool else 'no_'}blurpool: {args.weights} is a checkpoint of a "
            f"run {'without' if args.blurpool else 'with'} BlurPool; drop the flag (it is for "
            "bare state_dicts: a checkpoint knows its own)"
        )
    changed = {k: getattr(args, k) for k in FROM_TRAINING if k in given}
    if "image_size" in given and "val_res" not in given:
        changed["val_res"] = args.image_size
    if "val_res" in changed and "val_resize" not in given:
        changed["val_resize"] = None  # another crop: its own default shorter side
    return dataclasses.replace(
        base,
        **changed,
        data_dir=args.data_dir,
        batch=args.batch,
        accum=1,
        optimizer="sgd",  # an evaluation steps no optimizer: its LR and LARS checks are moot
        lr=None,
        workers=args.workers,
        device=args.device,
        resume="none",
        cache=False,
    )


def gather_rows(parts: list[tuple[torch.Tensor, torch.Tensor]], world_size: int):
    """(logits, labels) of every val image on rank 0, in the shards' order: DALI gives each
    rank a contiguous run of the samples, so the ranks' parts follow one another."""
    logits = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0)
    labels = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    if world_size == 1:
        return logits, labels
    everything = [None] * world_size
    dist.all_gather_object(everything, (logits, labels))
    return torch.cat([e[0] for e in everything]), torch.cat([e[1] for e in everything])


SPLIT = Flag(
    "split",
    str,
    "val",
    "the split of the shards to evaluate: val, or an evaluation set added to the shards folder "
    "(e.g. imagenetv2)",
)
LOGITS = Flag(
    "logits",
    str,
    None,
    "write every image's logits, label and key (its file name stem), in the shards' order, and "
    "the split, to this .npz file (with --real_labels: each image's ReaL top-1 too, "
    "real_correct: 1 right, 0 wrong, -1 unlabelled)",
    metavar="FILE",
)
# How the images are evaluated: as the checkpoint's run evaluated unless given here.
FROM_TRAINING = ("val_res", "val_resize", "tta", "amp_dtype", "mixed_precision")


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.evaluate",
        description="Top-1, top-5 and loss of a checkpoint (best.pt, last.pt), a run folder, "
        "an export of train.export or a bare state_dict (torchvision's resnet50/101/152 .pth) "
        "on the val shards, through the trainer's own DALI val pipeline. A checkpoint (or an "
        "export) knows its network (depth, variant, BlurPool) and how its run evaluated "
        "(--val_res, --val_resize, --tta, precision): those flags, given, override the latter "
        "only; a bare state_dict is fitted to --depth (default: the depth its keys have) and, "
        "unless given, whichever --variant its keys fit (torchvision's v1.5 first). --batch "
        "is global, split over the processes. A checkpoint's weights are those its run scored "
        "best with (best_weights: live or EMA) unless --ema or --no_ema says; the line printed "
        "names which. Several GPUs: torchrun --nproc_per_node=N -m "
        "train.evaluate ...",
    )
    flags = train_flags()
    p.add(flags["data_dir"], WEIGHTS, SPLIT, REAL_LABELS, flags["depth"], flags["variant"])
    p.add(*(flags[name] for name in ("batch", "device", "workers", "val_res", "val_resize")))
    p.add(*(flags[name] for name in ("image_size", "tta", "blurpool", "ema", "amp_dtype")))
    p.add(flags["mixed_precision"], JSON, LOGITS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = parser.given  # which flags were given: the rest come from the checkpoint
    return args


def run(args: argparse.Namespace, rank: int, world_size: int, local_rank: int) -> dict:
    require_dali()
    shards = open_shards(args.data_dir)
    images = split_images(shards, args.split)
    keys = shards.sample_keys(args.split) if args.logits or args.real_labels else None
    real = real_lists(args, shards, keys)
    depth, variant = (getattr(args, k) if k in args.given else None for k in ("depth", "variant"))
    ema = args.ema if "ema" in args.given else None  # None: the weights that scored best
    weights = read_weights(Path(args.weights), depth, variant, ema)
    if weights.num_classes != shards.num_classes:
        raise EvaluateError(
            f"--weights {args.weights} classifies {weights.num_classes} classes, but the shards "
            f"in {args.data_dir} have {shards.num_classes}: evaluate it on shards of the "
            "data it was trained for"
        )
    cfg = eval_config(args, weights)
    check(cfg, world_size)
    d = derive(cfg, rank, world_size, local_rank)
    start_process_group(d, cfg.dist_timeout_minutes)
    model = build_resnet(
        weights.depth,
        variant=weights.variant,
        num_classes=weights.num_classes,
        blurpool=cfg.blurpool,
    )
    model.load_state_dict(weights.state_dict)
    model.to(d.device)
    if d.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_loader(shards, args.split, **loader_kwargs(cfg, d, d.val_res))
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(logits: torch.Tensor, labels: torch.Tensor) -> None:
        parts.append((logits.cpu(), labels.cpu()))

    every_image = keys is not None  # each image's logits, gathered
    start = time.perf_counter()
    result = evaluate(model, loader, d, record=keep if every_image else None, tta=cfg.tta)
    seconds = time.perf_counter() - start
    if result["val_samples"] != images:
        raise RuntimeError(
            f"evaluated {result['val_samples']} images, the manifest lists {images}: please "
            "report this"
        )
    record = result_record(args, weights, cfg, d, result, seconds)
    if every_image:
        logits, labels = gather_rows(parts, d.world_size)
        if d.rank == 0 and args.logits:
            correct = real_correct(logits, real) if real is not None else None
            write_logits(Path(args.logits), logits, labels, keys, args.split, correct)
        if real is not None:
            record |= real_accuracy(logits, real)
    return record


def real_lists(args: argparse.Namespace, shards: Shards, keys: list | None) -> list | None:
    """--real_labels: each val image's ReaL list, in the shards' order (`keys`), checked
    before anything runs."""
    if args.real_labels is None:
        return None
    if args.split != "val":
        raise EvaluateError(
            f"--real_labels labels ImageNet's val images, not --split {args.split}: drop one"
        )
    return read_real_labels(Path(args.real_labels), keys, shards.num_classes)


def write_logits(
    path: Path,
    logits: torch.Tensor,
    labels: torch.Tensor,
    keys: list,
    split: str,
    real: np.ndarray | None,
) -> None:
    """Every image's logits, label and key, in the shards' order, and the split; with
    --real_labels, `real_correct` too: each image's ReaL top-1 (1 right, 0 wrong, -1 no
    label), what the comparison's paired tests on ReaL read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"logits": logits.numpy(), "labels": labels.numpy(), "keys": np.array(keys)}
    arrays["split"] = np.array(split)
    if real is not None:
        arrays["real_correct"] = real
    with atomic_file(path) as f:  # a file object: np.savez adds no .npz to the name
        np.savez(f, **arrays)


def result_record(
    args: argparse.Namespace,
    weights: Weights,
    cfg: TrainConfig,
    d: Derived,
    result: dict,
    seconds: float,
) -> dict:
    """What the evaluation prints and writes with --json."""
    precision = str(d.amp_dtype).split(".")[-1] + " autocast" if d.amp else "float32"
    return {
        "top1": result["val_top1"],
        "top5": result["val_top5"],
        "loss": result["val_loss"],
        "images": result["val_samples"],
        "seconds": round(seconds, 3),
        "images_per_second": round(result["val_samples"] / max(seconds, 1e-9), 1),
        "weights": str(args.weights),
        "weights_kind": weights.kind,
        "weights_scored": weights.scored,
        "depth": weights.depth,
        "variant": weights.variant,
        "num_classes": weights.num_classes,
        "data_dir": str(args.data_dir),
        "split": args.split,
        "image_size": d.val_res,
        "val_resize": d.val_resize,
        "blurpool": cfg.blurpool,
        "tta": cfg.tta,
        "val_transform": "plain resize" if cfg.dali.val_plain_resize else "resize + centre crop",
        "precision": precision,
        "world_size": d.world_size,
        "device": str(d.device),
        "date": date.today().isoformat(),
        "code_version": code_version(),
        "machine": machine_facts(d.device, d.world_size),
    }


def report(r: dict) -> str:
    real = ""
    if "real_images" in r:
        real = (
            f", ReaL top-1 {100 * (r['real_top1'] or 0):.2f}% top-5 "
            f"{100 * (r['real_top5'] or 0):.2f}% on the {r['real_images']:,} images it labels"
        )
    return (
        f"ResNet-{r['depth']} ({r['variant']}, {r['weights_kind']}) on the {r['images']:,} "
        f"{r['split']} images of {r['data_dir']} at {r['image_size']}px (from "
        f"{r['val_resize']}px){' with BlurPool' if r['blurpool'] else ''}"
        f"{' with flip TTA' if r['tta'] else ''}: top-1 {100 * r['top1']:.2f}%, "
        f"top-5 {100 * r['top5']:.2f}%, loss {r['loss']:.4f}{real}; {r['seconds']:.1f} s, "
        f"{r['images_per_second']:,.0f} images/s ({r['world_size']} x "
        f"{r['device'].split(':')[0]}, {r['precision']})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world_size, local_rank = dist_env()
    try:
        result = run(args, rank, world_size, local_rank)
        if rank == 0:
            print(report(result))
            if args.json:
                write_atomic(args.json, json.dumps(result, indent=1) + "\n")
        return 0
    except (
        EvaluateError, ShardsError, ConfigError, RealLabelsError, CheckpointError, DaliMissing,
        WeightsError,
    ) as e:  # fmt: skip
        if rank == 0:
            print(f"train.evaluate: error: {e}", file=sys.stderr)
        return 2
    finally:
        end_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
