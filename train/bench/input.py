"""make bench-input: the trainer's DALI train pipeline (its train order fed by byte range)
against the same decode and augmentation behind DALI's webdataset reader, and against
torchvision + PIL in a DataLoader, on the same shards, in the same run (build_parser's
description says more)."""

from __future__ import annotations

import argparse
import math
import time
from types import SimpleNamespace

import torch

from models.flags import FlagParser
from prep.flags import JSON
from train.bench.common import ALIASES, BATCHES, GENERATED, WARMUP, steady_rate
from train.config import train_flags
from train.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PipelineKnobs,
    dali_threads,
    make_feed_loader,
    make_loader,
)
from train.feed import Origin, TrainFeed, train_locations
from train.order import steps_per_epoch
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


def webdataset_batches(
    shards: Shards, batch: int, workers: int, image_size: int, device, dtype, **knobs
):  # fmt: skip
    """DALI's webdataset reader (each tar's samples in a shuffle buffer, the tars reordered
    each epoch) with the trainer's decoding and augmentation: the reader it replaced."""
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


def bench_feed(shards: Shards, batch: int, image_size: int, epochs: int) -> TrainFeed:
    """The trainer's train feed for one rank at --batch, --order global, for `epochs` epochs."""
    locations = train_locations(shards)
    steps = steps_per_epoch(locations.samples, batch)
    return TrainFeed(
        locations, seed=0, order="global", repeated=1, batch=batch, rank=0, world_size=1,
        cap=batch, steps=steps, resolutions=(image_size,) * epochs, origin=Origin(0),
    )  # fmt: skip


def feed_batches(
    shards: Shards, batch: int, workers: int, image_size: int, device, dtype, epochs: int,
    **knobs,
):  # fmt: skip
    """The trainer's train pipeline: its train order read by byte range through an external
    source, the same decoding and augmentation (train.inputs.train_data builds the same)."""
    feed = bench_feed(shards, batch, image_size, epochs)
    loader = make_feed_loader(
        feed, batch_size=max(m.size for m in feed.micros), num_threads=workers, device=device,
        seed=0, dtype=dtype, knobs=PipelineKnobs(**knobs),
    )  # fmt: skip
    for _ in range(epochs):
        yield from loader


def feed_cpu_us_per_image(feed: TrainFeed, images: int) -> float:
    """The CPU time the feed spends per image (the order, the index lookups, the preads),
    called as DALI calls it, over about `images` images of the first epochs."""
    done, start = 0, time.process_time()
    for epoch in range(len(feed.resolutions)):
        for iteration in range(len(feed.micros)):
            jpegs, _, _ = feed(SimpleNamespace(epoch_idx=epoch, iteration=iteration))
            done += len(jpegs)
            if done >= images:
                return 1e6 * (time.process_time() - start) / done
    return 1e6 * (time.process_time() - start) / done


INPUT_LABELS = {
    "feed": "DALI, the trainer's train order, on the {where}",
    "webdataset": "DALI, webdataset reader, on the {where}",
    "dataloader": "torchvision + PIL in a DataLoader",
    "feed_auto": "DALI, train order, {augment} on the {where}",
    "dataloader_auto": "DataLoader, torchvision's {augment}",
}


def bench_input(args: argparse.Namespace, shards: Shards, device: torch.device) -> dict:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    size, batch, workers, augment = args.image_size, args.batch, args.workers, args.auto_augment
    ra = (args.ra_ops, args.ra_magnitude)
    feed = bench_feed(shards, batch, size, epochs=1)
    # as many epochs as the warm-up and the timed batches need, and one more
    epochs = math.ceil((args.warmup + args.batches) / len(feed.micros)) + 1
    contenders = {  # the trainer's first: it reads the shards cold, if anyone does
        "feed": lambda: feed_batches(shards, batch, workers, size, device, dtype, epochs),
        "webdataset": lambda: webdataset_batches(shards, batch, workers, size, device, dtype),
        "dataloader": lambda: dataloader_batches(shards, batch, workers, size),
    }
    if augment != "none":  # as the accurate recipe: no colour jitter, the augmentation instead
        knobs = {"auto_augment": augment, "color_jitter": False, "ra_ops": ra[0]}
        knobs["ra_magnitude"] = ra[1]
        contenders["feed_auto"] = lambda: feed_batches(
            shards, batch, workers, size, device, dtype, epochs, **knobs
        )
        contenders["dataloader_auto"] = lambda: dataloader_batches(
            shards, batch, workers, size, augment, ra
        )
    rows = {}
    for name, make in contenders.items():
        rate, images = steady_rate(make(), device, args.warmup, args.batches)
        rows[name] = {"images_per_s": round(rate, 1), "images_timed": images}
    feed_us = feed_cpu_us_per_image(feed, args.batches * batch)
    rate = {name: row["images_per_s"] for name, row in rows.items()}
    ratios = {
        "feed/webdataset": rate["feed"] / rate["webdataset"],
        "feed/dataloader": rate["feed"] / rate["dataloader"],
    }
    if augment != "none":
        ratios["feed_auto/dataloader_auto"] = rate["feed_auto"] / rate["dataloader_auto"]
        ratios["feed_auto/feed"] = rate["feed_auto"] / rate["feed"]
        ratios["dataloader_auto/dataloader"] = rate["dataloader_auto"] / rate["dataloader"]
    print_input_table(args, shards, device, rows, ratios, feed_us)
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
        "feed_cpu_us_per_image": round(feed_us, 1),
        "ratio": round(ratios["feed/webdataset"], 3),
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }


def print_input_table(
    args, shards: Shards, device: torch.device, rows: dict, ratios: dict, feed_us: float
):  # fmt: skip
    where = "GPU (mixed decoder)" if device.type == "cuda" else "CPU"
    print(
        f"\nbench-input: {shards.folder}, batch {args.batch}, {args.image_size}px, "
        f"{args.workers} CPU workers"
    )
    print(f"{'pipeline':<52}{'images/s':>10}")
    for name, row in rows.items():
        label = INPUT_LABELS[name].format(where=where, augment=args.auto_augment)
        print(f"{label:<52}{row['images_per_s']:>10.0f}")
    for name, ratio in ratios.items():
        print(f"{name.replace('_auto', f' + {args.auto_augment}')}: {ratio:.2f}x")
    print(f"the train order's feed: {feed_us:.0f} us of CPU per image (order, index, pread)")


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.bench input",
        aliases=ALIASES,
        description="Steady-state images/s of the trainer's DALI train pipeline (its train "
        "order, read by byte range through an external source) on the device it would train "
        "on, against, in the same run, on the same shards and with as many CPU workers "
        "(--workers DALI threads, as many DataLoader processes): the same decoding and "
        "augmentation behind DALI's webdataset reader (the reader the train order replaced; "
        "goal >= 0.9x), and the pipeline users would otherwise pick: torchvision transforms "
        "(RandomResizedCrop, flip, ColorJitter, normalize) on PIL images in a torch "
        "DataLoader (shards read with webdataset). It also prints the CPU time per image of "
        "the feed itself. With --auto_augment, also the trainer's pipeline with that "
        "augmentation (no colour jitter, as the accurate recipe) against torchvision's "
        "TrivialAugmentWide / RandAugment in the DataLoader. On a CPU, a smaller --batch "
        "(e.g. 64) keeps it short.",
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
