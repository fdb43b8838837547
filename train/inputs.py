"""The batches a run trains and validates on: the DALI loaders of train.data set up from the
config, or synthetic batches on the device (--synthetic: the model alone)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from train.config import Derived, TrainConfig
from train.data import DaliLoader, FedLoader, make_feed_loader, make_loader
from train.feed import Origin, TrainFeed, train_locations
from train.order import Micro, epoch_samples, rank_micros, step_bounds
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


def synthetic_batches(
    d: Derived, batch: int, n: int, image_size: int, num_classes: int, seed: int
):  # fmt: skip
    """n batches of random input of the right shape, type and layout on the device: the
    model alone."""
    g = torch.Generator(device=d.device).manual_seed(seed)
    dtype = torch.float16 if d.amp else torch.float32
    shape = (batch, 3, image_size, image_size)
    images = torch.randn(shape, device=d.device, generator=g).to(dtype)
    images = images.contiguous(memory_format=torch.channels_last)  # as DALI's batches are
    labels = torch.randint(0, num_classes, (batch,), device=d.device, generator=g)
    for _ in range(n):
        yield images, labels


@dataclass
class TrainData:
    """This rank's train micro-batches of every epoch, with which part of which optimizer
    step each one is (train.order): through one DALI pipeline over the train feed for the
    whole run, or synthetic input on the device (--synthetic: ImageNet's count of samples).

    `start` is where the run goes on from, (epoch, optimizer steps done in it). A saved feed
    (`saved`: feed_state's of a checkpoint) of the same shape of run (ranks, micro-batch,
    feed workers, device) restores every rank's DALI pipeline where it was, so the run
    continues bit for bit; of another, the pipelines start afresh at `start`, reading the
    same samples, drawing other crops."""

    cfg: TrainConfig
    d: Derived
    plan: StepPlan
    samples: int  # in the train set
    micros: list[Micro]  # of an epoch, this rank's
    loader: FedLoader | None  # None: synthetic input
    origin: Origin
    num_classes: int
    counts: tuple[int, ...]  # samples per train tar
    loader_epoch: int = 0  # the run's epoch the pipeline serves next

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample indices (in the shards' order), in the order it trains them."""
        cfg = self.cfg
        return epoch_samples(
            self.counts, cfg.seed, epoch, cfg.order, cfg.repeated_aug, cfg.batch
        )  # fmt: skip

    def step_ids(self, epoch: int, step: int) -> np.ndarray:
        """The sample indices of optimizer step `step`, over every rank."""
        return self.order(epoch)[slice(*step_bounds(self.samples, self.cfg.batch, step))]

    def micro_ids(self, epoch: int, micro: Micro) -> np.ndarray:
        """The sample indices of one of this rank's micro-batches."""
        return self.order(epoch)[micro.lo : micro.hi]

    def step_samples(self, step: int) -> int:
        """How many samples optimizer step `step` of an epoch holds, over every rank."""
        start, stop = step_bounds(self.samples, self.cfg.batch, step)
        return stop - start

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple]:
        """(images, labels, micro) of this rank's micro-batches of `epoch`, from optimizer
        step `start_step` on; at its end the pipeline is at the next epoch's start."""
        micros = [m for m in self.micros if m.step >= start_step]
        if self.loader is None:
            yield from self.synthetic(epoch, micros)
            return
        if not micros and self.loader_epoch != epoch:
            return  # nothing of it is left, and the pipeline starts after it
        if self.loader_epoch != epoch:
            raise RuntimeError(f"the train feed is in epoch {self.loader_epoch}, not {epoch}")
        batches = iter(self.loader)
        if not micros:  # a feed saved at its epoch's last micro-batch, before its end
            self.end_of_epoch(batches, epoch, 0)
        for i, micro in enumerate(micros):
            images, labels = next(batches, (None, None))
            if images is None or images.shape[0] != micro.size:
                got = "nothing" if images is None else images.shape[0]
                raise RuntimeError(f"the train feed gave {got}, not {micro.size} samples")
            if i == len(micros) - 1:  # before the last step runs: a save there (a stop) then
                self.end_of_epoch(batches, epoch, len(micros))  # holds the next epoch's start
            yield images, labels, micro

    def end_of_epoch(self, batches, epoch: int, count: int) -> None:
        """Take the pipeline's end of `epoch` (and its reset): it now serves the next one."""
        if next(batches, None) is not None:
            raise RuntimeError(f"the train feed gave more than {count} micro-batches")
        self.loader_epoch = epoch + 1

    def synthetic(self, epoch: int, micros: list[Micro]) -> Iterator[tuple]:
        """Random input of the right shape, type and layout on the device: the model alone."""
        largest = max((m.size for m in micros), default=1)
        size = train_resolution(self.d, epoch)
        for micro, (images, labels) in zip(
            micros, synthetic_batches(self.d, largest, len(micros), size, self.num_classes,
                                      self.cfg.seed + epoch), strict=False,
        ):  # fmt: skip
            yield images[: micro.size], labels[: micro.size], micro

    def feed_state(self) -> dict | None:
        """What a checkpoint keeps of the feed: the origin and shape of the pipelines, and
        every rank's DALI checkpoint (gathered: every rank calls it); None: synthetic."""
        if self.loader is None:
            return None
        mine = self.loader.checkpoint()
        every = [mine]
        if self.d.world_size > 1:
            every = [None] * self.d.world_size
            dist.all_gather_object(every, mine)
        origin = [self.origin.epoch, self.origin.micro]
        shape = feed_shape(self.cfg, self.d)
        return {"origin": origin, "epoch": self.loader_epoch, "shape": shape, "dali": every}


def feed_shape(cfg: TrainConfig, d: Derived) -> list:
    """What a DALI checkpoint of the feed's pipelines needs to be restored: the same ranks,
    micro-batch cap, feed workers and device type."""
    return [d.world_size, d.micro_batch, cfg.dali.feed_workers, d.device.type]


def train_data(
    cfg: TrainConfig, d: Derived, shards: Shards | None, plan: StepPlan, start: tuple[int, int],
    saved: dict | None = None,
) -> TrainData:  # fmt: skip
    """This rank's TrainData for the run, going on from `start` (epoch, steps done)."""
    samples, num_classes = train_counts(shards)
    micros = rank_micros(
        samples, cfg.batch, d.rank, d.world_size, d.micro_batch, plan.steps_per_epoch
    )  # fmt: skip
    first = next((i for i, m in enumerate(micros) if m.step >= start[1]), None)
    # at an epoch's end (a stop at its last step), a new pipeline starts with the next one
    origin = Origin(start[0] + 1) if first is None else Origin(start[0], first)
    checkpoint, loader_epoch = None, origin.epoch
    if saved is not None and saved["shape"] == feed_shape(cfg, d):
        origin, checkpoint = Origin(*saved["origin"]), saved["dali"][d.rank]
        loader_epoch = saved["epoch"]
    locations = None if cfg.synthetic else train_locations(shards)
    counts = (samples,) if locations is None else locations.counts
    data = TrainData(cfg, d, plan, samples, micros, None, origin, num_classes, counts, loader_epoch)
    if cfg.synthetic:
        return data
    feed = TrainFeed(
        locations, cfg.seed, cfg.order, cfg.repeated_aug, cfg.batch, d.rank,
        d.world_size, d.micro_batch, plan.steps_per_epoch,
        tuple(train_resolution(d, e) for e in range(cfg.epochs)), origin,
    )  # fmt: skip
    data.loader = make_feed_loader(
        feed, batch_size=max(m.size for m in micros), num_threads=d.workers, device=d.device,
        seed=cfg.seed + d.rank, dtype=torch.float16 if d.amp else torch.float32,
        knobs=cfg.dali, checkpoint=checkpoint,
    )  # fmt: skip
    return data


def val_batches(cfg: TrainConfig, d: Derived, shards: Shards | None) -> DaliLoader | None:
    """This rank's share of the val images, each counted once over the ranks (none for
    --synthetic)."""
    if cfg.synthetic:
        return None
    return make_loader(shards, "val", **loader_kwargs(cfg, d, d.val_res))
