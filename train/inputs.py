"""The batches a run trains and validates on: the DALI loaders of train.data set up from the
config, or synthetic batches on the device (--synthetic: the model alone)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from train.config import Derived, TrainConfig
from train.data import DaliLoader, make_loader
from train.schedule import StepPlan, train_resolution
from train.shards import Shards, train_counts


def loader_kwargs(cfg: TrainConfig, d: Derived, image_size: int) -> dict:
    """make_loader's arguments for this rank at this crop size, from the config (--workers:
    the DALI threads)."""
    knobs = {k: getattr(cfg.dali, k) for k in cfg.dali.__dataclass_fields__}
    return {
        "batch_size": d.micro_batch,
        "num_threads": d.workers,
        "image_size": image_size,
        "rank": d.rank,
        "world_size": d.world_size,
        "device": d.device,
        "seed": cfg.seed,
        "dtype": torch.float16 if d.amp else torch.float32,
        "val_resize": d.val_resize,  # the val pipeline's; the train one has none
        **knobs,
    }


def synthetic_batches(d: Derived, n: int, image_size: int, num_classes: int, seed: int):
    """Random input of the right shape, type and layout on the device: the model alone."""
    g = torch.Generator(device=d.device).manual_seed(seed)
    dtype = torch.float16 if d.amp else torch.float32
    shape = (d.micro_batch, 3, image_size, image_size)
    images = torch.randn(shape, device=d.device, generator=g).to(dtype)
    images = images.contiguous(memory_format=torch.channels_last)  # as DALI's batches are
    labels = torch.randint(0, num_classes, (d.micro_batch,), device=d.device, generator=g)
    for _ in range(n):
        yield images, labels


def train_batches(
    cfg: TrainConfig, d: Derived, shards: Shards | None, epoch: int, plan: StepPlan
) -> Iterable:
    """This rank's batches of one epoch at its train resolution: a pure function of (--seed,
    epoch), so that a resumed run sees what an uninterrupted one would have."""
    size = train_resolution(d, epoch)
    if cfg.synthetic:
        classes = train_counts(shards)[1]
        return synthetic_batches(d, plan.batches_per_epoch, size, classes, cfg.seed + epoch)
    batches = make_loader(shards, "train", epoch=epoch, **loader_kwargs(cfg, d, size))
    if len(batches) != plan.loader_batches:  # the step count every rank relies on
        raise RuntimeError(
            f"DALI yields {len(batches)} batches per epoch, the trainer planned "
            f"{plan.loader_batches}: please report this with config.json"
        )
    return batches


def val_batches(cfg: TrainConfig, d: Derived, shards: Shards | None) -> DaliLoader | None:
    """This rank's share of the val images, each counted once over the ranks (none for
    --synthetic)."""
    if cfg.synthetic:
        return None
    return make_loader(shards, "val", **loader_kwargs(cfg, d, d.val_res))
