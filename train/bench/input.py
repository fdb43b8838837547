"""make bench-input: the DALI train pipeline's images/s against torchvision + PIL in a
DataLoader, on the same shards, in the same run (build_parser's description says more)."""

from __future__ import annotations

import argparse

import torch

from models.flags import FlagParser
from prep.flags import JSON
from train.bench.common import ALIASES, BATCHES, GENERATED, WARMUP, steady_rate
from train.config import train_flags
from train.data import IMAGENET_MEAN, IMAGENET_STD, PipelineKnobs, dali_threads, make_loader
from train.shards import Shards


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


def bench_input(args: argparse.Namespace, shards: Shards, device: torch.device) -> dict:
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
    print_input_table(args, shards, device, rows, ratios)
    return {
        "benchmark": "input",
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


def print_input_table(args, shards: Shards, device: torch.device, rows: dict, ratios: dict):
    where = "GPU (mixed decoder)" if device.type == "cuda" else "CPU"
    print(
        f"\nbench-input: {shards.folder}, batch {args.batch}, {args.image_size}px, "
        f"{args.workers} CPU workers"
    )
    print(f"{'pipeline':<48}{'images/s':>10}")
    for name, row in rows.items():
        label = INPUT_LABELS[name].format(where=where, augment=args.auto_augment)
        print(f"{label:<48}{row['images_per_s']:>10.0f}")
    for name, ratio in ratios.items():
        print(f"{name.replace('_auto', f' + {args.auto_augment}')}: {ratio:.2f}x")


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.bench input",
        aliases=ALIASES,
        description="Steady-state images/s of the DALI train pipeline on the device it would "
        "train on, against, in the same run, on the same shards and with as many CPU workers "
        "(--workers DALI threads, as many DataLoader processes), the pipeline users would "
        "otherwise pick: torchvision transforms (RandomResizedCrop, flip, ColorJitter, "
        "normalize) on PIL images in a torch DataLoader (shards read with webdataset). With "
        "--auto_augment, also DALI with that augmentation (no colour jitter, as the accurate "
        "recipe) against torchvision's TrivialAugmentWide / RandAugment in the DataLoader. "
        "On a CPU, a smaller --batch (e.g. 64) keeps it short.",
    )
    flags = train_flags()
    p.add(flags["data_dir"], GENERATED, flags["device"], flags["workers"], flags["batch"])
    p.add(flags["image_size"], flags["auto_augment"], flags["ra_ops"], flags["ra_magnitude"])
    p.add(WARMUP, BATCHES, JSON)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.workers = dali_threads(args.workers)  # and as many DataLoader processes
    return args
