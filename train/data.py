"""The DALI input pipelines: one function per split, GPU or CPU as a parameter.

Train: the trainer's train order (train.order, read by train.feed.TrainFeed through an
external source: make_feed_loader), or DALI's webdataset reader sharded by rank (shuffle
buffer + whole-tar reshuffle each epoch: make_loader, the input benchmark's baseline); then
the same JPEG decoding fused with random-resized-crop (`device="mixed"` on a GPU: nvJPEG, the
hardware decoder where there is one), resize, optional colour jitter, flip, optional
automatic augmentation (TrivialAugment wide, RandAugment), normalize.
Val: webdataset reader, decode, resize the shorter side to image_size / 0.875 (or
val_resize), centre crop, normalize.

Batches come out as (images, labels): images (B, 3, S, S) in channels_last memory (DALI's
NHWC seen as NCHW without a copy), float16 when training in mixed precision (DALI has no
bfloat16; autocast casts the first conv's input), labels int64 (B,). On the GPU when the
pipeline runs there.

Exactly once (val, and the reader's train epochs): the readers pad their shard
(`pad_last_batch`) and the iterator drops the padding (`LastBatchPolicy.PARTIAL`), so an
epoch over N ranks yields every sample exactly once and every rank yields the same number of
batches; a rank's last batch may be smaller, even empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import torch

from train.shards import Shards

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_CROP_FRACTION = 0.875  # resize the shorter side to 256 for a 224 crop
READER = "Reader"
DEFAULT_THREADS = 8  # DALI CPU threads per pipeline, at most, when --workers is not given


AUTO_AUGMENTS = ("none", "ta_wide", "rand_augment")
# torchvision's RandAugment translates by up to 150/331 of the image's side (its
# _augmentation_space: 150.0 / 331.0 * image_size), at 176 px 80 px.
RAND_AUGMENT_TRANSLATE = 150 / 331


class DaliMissing(Exception):
    """NVIDIA DALI is not installed; the message says how to install it."""


def require_dali() -> None:
    """Raise DaliMissing, naming the install command, when DALI cannot be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise DaliMissing(
            "NVIDIA DALI is not installed: `make install` installs the build that matches "
            "PyTorch's CUDA; or pip install '.[cuda13]' (PyTorch for CUDA 13) or '.[cuda12]' "
            "(CUDA 12, or a CPU-only PyTorch)"
        ) from None


def dali_threads(workers: int | None) -> int:
    """--workers, else the machine's CPU cores, at most DEFAULT_THREADS (more threads than
    cores slow a CPU pipeline down: the demo took twice as long with 8 on 2 cores)."""
    return workers or min(DEFAULT_THREADS, os.cpu_count() or 1)


def knob(default, help: str, choices=None, trains: bool = True):
    """A DALI knob; `trains` as train.config.opt's."""
    return field(default=default, metadata={"help": help, "choices": choices, "trains": trains})


@dataclass(frozen=True)
class PipelineKnobs:
    """DALI settings; the defaults suit one H100 with 16 CPU cores and ImageNet JPEGs. The
    thread count is not one of them: it is the trainer's --workers (make_loader's
    num_threads)."""

    prefetch: int = knob(2, "batches DALI prepares ahead (prefetch_queue_depth)", trains=False)
    shuffle_buffer: int = knob(4096, "samples in the reader's shuffle buffer (initial_fill)")
    color_jitter: bool = knob(True, "train: brightness +-40%, contrast and saturation 0.8-1.2")
    flip: bool = knob(True, "train: random horizontal flip with p = 0.5")
    auto_augment: str = knob(
        "none",
        "train: an automatic augmentation after the crop and flip, DALI's (nvidia.dali.auto_aug) "
        "with torchvision's settings: ta_wide (TrivialAugment wide: one of 14 operations at a "
        "random magnitude per image), rand_augment (--ra_ops operations at --ra_magnitude)",
        choices=AUTO_AUGMENTS,
    )
    ra_ops: int = knob(2, "rand_augment: operations per image (torchvision's num_ops)")
    ra_magnitude: int = knob(9, "rand_augment: magnitude, 0-30 (torchvision's magnitude)")
    crop_area_min: float = knob(0.08, "train: random-resized-crop area range [this, 1]")
    val_plain_resize: bool = knob(False, "val: plain SxS resize (distorts) instead of 256 + crop")
    hw_decoder_load: float = knob(
        0.65, "share of JPEGs sent to the hardware decoder (A100/H100)", trains=False
    )
    # nvJPEG buffers preallocated for ImageNet's largest images, so that no batch reallocates.
    preallocate_width_hint: int = knob(
        5980, "nvJPEG: width to preallocate buffers for", trains=False
    )
    preallocate_height_hint: int = knob(
        6430, "nvJPEG: height to preallocate buffers for", trains=False
    )
    device_memory_padding: int = knob(
        211_025_920, "nvJPEG: bytes of headroom, device buffers", trains=False
    )
    host_memory_padding: int = knob(
        140_544_512, "nvJPEG: bytes of headroom, pinned host buffers", trains=False
    )
    read_ahead: bool = knob(False, "read whole tars ahead (slow network storage)", trains=False)
    feed_workers: int | None = knob(
        None,
        "worker processes that read the train samples for DALI (default: 4 on a GPU; 0 on the "
        "CPU: the reading runs in the pipeline's own thread, where a worker's start would cost "
        "more than it saves)",
        trains=False,
    )


def knob_names() -> list[str]:
    return [f.name for f in fields(PipelineKnobs)]


def decoder_kwargs(gpu: bool, knobs: PipelineKnobs) -> dict:
    """The decoder's memory and hardware-decoder settings (they apply to nvJPEG only)."""
    if not gpu:
        return {"device": "cpu"}
    return {
        "device": "mixed",
        "hw_decoder_load": knobs.hw_decoder_load,
        "preallocate_width_hint": knobs.preallocate_width_hint,
        "preallocate_height_hint": knobs.preallocate_height_hint,
        "device_memory_padding": knobs.device_memory_padding,
        "host_memory_padding": knobs.host_memory_padding,
    }


def read_shards(files, index_files, *, shard_id, num_shards, train, reader_seed, knobs):
    """The webdataset reader: (jpeg bytes, class digits)."""
    from nvidia.dali import fn

    return fn.readers.webdataset(
        paths=files,
        index_paths=index_files,
        ext=["jpg", "cls"],
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=train,
        initial_fill=knobs.shuffle_buffer,
        shuffle_after_epoch=train,  # whole tars reordered: the same seed on all ranks
        seed=reader_seed,
        pad_last_batch=True,
        read_ahead=knobs.read_ahead,
        name=READER,
    )


def normalize(images, *, dtype, mirror=None):
    """Normalize with the ImageNet mean and std into HWC (channels_last), optional flip."""
    from nvidia.dali import fn, types

    kwargs = {"mirror": mirror} if mirror is not None else {}
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT16 if dtype == torch.float16 else types.FLOAT,
        output_layout="HWC",
        mean=[255 * m for m in IMAGENET_MEAN],
        std=[255 * s for s in IMAGENET_STD],
        **kwargs,
    )


def train_pipeline(
    files, index_files, *, image_size, shard_id, num_shards, reader_seed, gpu, dtype, knobs,
    val_resize=None,
):  # fmt: skip
    """The webdataset reader's train pipeline: train_augment of its samples (val_resize
    unused)."""
    jpegs, digits = read_shards(
        files, index_files, shard_id=shard_id, num_shards=num_shards, train=True,
        reader_seed=reader_seed, knobs=knobs,
    )  # fmt: skip
    images = train_augment(jpegs, (image_size, image_size), gpu=gpu, dtype=dtype, knobs=knobs)
    return images, digits.gpu() if gpu else digits


def fed_train_pipeline(feed, *, gpu, dtype, knobs, workers):
    """The train pipeline over a TrainFeed (train.feed: this rank's micro-batches of the train
    order, read by byte range) instead of the webdataset reader: the same decoding and
    augmentation, at the crop size the feed gives for each epoch. `workers`: the feed's worker
    processes (0: it runs in the pipeline's own thread)."""
    from nvidia.dali import fn, types

    jpegs, digits, size = fn.external_source(
        source=feed, num_outputs=3, batch=True, batch_info=True, parallel=workers > 0,
        dtype=[types.UINT8, types.UINT8, types.FLOAT],
    )  # fmt: skip
    images = train_augment(jpegs, size, gpu=gpu, dtype=dtype, knobs=knobs)
    return images, digits.gpu() if gpu else digits


def train_augment(jpegs, size, *, gpu, dtype, knobs):
    """Random-resized-crop (area crop_area_min-1, default 0.08-1; aspect 3/4-4/3) fused with
    decoding, resize to `size` ((S, S), or a DataNode of it per sample), jitter, flip,
    automatic augmentation, normalize."""
    from nvidia.dali import fn, types

    images = fn.decoders.image_random_crop(
        jpegs,
        output_type=types.RGB,
        random_area=[knobs.crop_area_min, 1.0],
        random_aspect_ratio=[3 / 4, 4 / 3],
        num_attempts=100,
        **decoder_kwargs(gpu, knobs),
    )
    images = fn.resize(images, size=size)
    if knobs.color_jitter:
        images = fn.color_twist(
            images,
            brightness=fn.random.uniform(range=[0.6, 1.4]),
            contrast=fn.random.uniform(range=[0.8, 1.2]),
            saturation=fn.random.uniform(range=[0.8, 1.2]),
        )
    mirror = fn.random.coin_flip(probability=0.5) if knobs.flip else None
    if knobs.auto_augment != "none":  # on uint8 images: the flip cannot wait for normalize
        if mirror is not None:
            images = fn.flip(images, horizontal=mirror)
            mirror = None
        images = auto_augmented(images, knobs, size)
    return normalize(images, dtype=dtype, mirror=mirror)


def auto_augmented(images, knobs: PipelineKnobs, size):
    """DALI's TrivialAugment wide or RandAugment (on the pipeline's device, CPU or GPU), with
    torchvision's settings: 31 magnitude bins, translations of up to 32 px (TrivialAugment)
    or of up to 150/331 of the image's side (RandAugment, as torchvision's; DALI's own default
    is 100 px whatever the size), areas uncovered by a rotation, shear or translation filled
    with 0 (black) as torchvision's fill=None."""
    from nvidia.dali.auto_aug import rand_augment, trivial_augment

    if knobs.auto_augment == "ta_wide":
        return trivial_augment.trivial_augment_wide(images, fill_value=0)
    return rand_augment.rand_augment(
        images, n=knobs.ra_ops, m=knobs.ra_magnitude, fill_value=0,
        shape=size, max_translate_rel=RAND_AUGMENT_TRANSLATE,
    )  # fmt: skip


def val_pipeline(
    files, index_files, *, image_size, shard_id, num_shards, reader_seed, gpu, dtype, knobs,
    val_resize=None,
):  # fmt: skip
    """Decode, resize the shorter side to val_resize (default image_size / 0.875), centre
    crop (or a plain resize)."""
    jpegs, digits = read_shards(
        files, index_files, shard_id=shard_id, num_shards=num_shards, train=False,
        reader_seed=reader_seed, knobs=knobs,
    )  # fmt: skip
    images = val_transform(jpegs, image_size, gpu=gpu, dtype=dtype, knobs=knobs,
                           val_resize=val_resize)  # fmt: skip
    return images, digits.gpu() if gpu else digits


def val_transform(encoded, image_size, *, gpu, dtype, knobs, val_resize=None):
    """Decode (JPEG, PNG, WebP, ...), resize the shorter side to val_resize and centre crop
    image_size (or a plain resize with val_plain_resize), normalize: the val pipeline's and
    train.predict's."""
    from nvidia.dali import fn, types

    images = fn.decoders.image(encoded, output_type=types.RGB, **decoder_kwargs(gpu, knobs))
    if knobs.val_plain_resize:
        images = fn.resize(images, resize_x=image_size, resize_y=image_size)
    else:
        images = resize_and_centre_crop(encoded, images, image_size, val_resize)
    return normalize(images, dtype=dtype)


FED_IMAGES = "encoded"  # the external source of files_pipeline


def files_pipeline(*, image_size, gpu, dtype, knobs, val_resize=None):
    """The val transform of encoded image files that the caller feeds, a batch at a time
    (pipe.feed_input(FED_IMAGES, [uint8 arrays]) then pipe.run()): train.predict's."""
    from nvidia.dali import fn, types

    encoded = fn.external_source(name=FED_IMAGES, dtype=types.UINT8, ndim=1)
    return val_transform(encoded, image_size, gpu=gpu, dtype=dtype, knobs=knobs,
                         val_resize=val_resize)  # fmt: skip


def make_files_pipeline(
    *, batch_size: int, num_threads: int, device, image_size: int, val_resize: int | None,
    dtype: torch.dtype, knobs: PipelineKnobs,
):  # fmt: skip
    """A built files_pipeline: fed and run one batch at a time (no prefetching)."""
    from nvidia.dali import pipeline_def

    gpu, device_id = dali_device(torch.device(device))
    pipe = pipeline_def(files_pipeline)(
        image_size=image_size, gpu=gpu, dtype=dtype, knobs=knobs, val_resize=val_resize,
        batch_size=batch_size, num_threads=num_threads, device_id=device_id,
        prefetch_queue_depth=1, exec_async=False, exec_pipelined=False,
    )  # fmt: skip
    pipe.build()
    return pipe


def transformed_files(pipe, encoded: list) -> torch.Tensor:
    """files_pipeline's output for these encoded files: (B, 3, S, S) on the CPU."""
    import numpy as np

    pipe.feed_input(FED_IMAGES, encoded)
    (images,) = pipe.run()
    if hasattr(images, "as_cpu"):
        images = images.as_cpu()
    batch = torch.from_numpy(np.array(images.as_tensor()))  # (B, S, S, 3)
    return batch.permute(0, 3, 1, 2)


def default_val_resize(crop: int) -> int:
    """The shorter side before a centre crop of `crop`: crop / 0.875 (256 for 224)."""
    return round(crop / VAL_CROP_FRACTION)


def resize_and_centre_crop(jpegs, images, image_size: int, shorter: int | None = None):
    """torchvision's Resize(shorter) + CenterCrop(S) (shorter: S / 0.875 unless given), to
    the pixel: the output sizes are truncated and the crop anchor rounded half to even as
    torchvision does, so that torchvision weights evaluate here as they do in torchvision's
    reference script."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    shorter = shorter or default_val_resize(image_size)
    shape = fn.peek_image_shape(jpegs, dtype=types.FLOAT)  # (H, W, C), from the JPEG header
    height, width = shape[0], shape[1]
    short = dmath.min(height, width)
    new_h, new_w = dmath.floor(shorter * height / short), dmath.floor(shorter * width / short)
    images = fn.resize(images, resize_x=new_w, resize_y=new_h)
    anchor = fn.stack(half_to_even(new_h - image_size), half_to_even(new_w - image_size))
    anchor = fn.cast(anchor, dtype=types.INT32)
    return fn.slice(images, start=anchor, shape=[image_size, image_size], axis_names="HW")


def half_to_even(n):
    """round(n / 2) with Python's rounding (half to even), for a DALI node holding integers."""
    from nvidia.dali import math as dmath

    half = dmath.floor(n / 2)
    odd_n = n - 2 * half
    odd_half = half - 2 * dmath.floor(half / 2)
    return half + odd_n * odd_half


def labels_from_digits(digits: torch.Tensor) -> torch.Tensor:
    """(B, k) uint8 ASCII digits of the fixed-width `.cls` text -> (B,) int64 class indices."""
    powers = 10 ** torch.arange(digits.shape[1] - 1, -1, -1, device=digits.device)
    return ((digits.long() - ord("0")) * powers).sum(1)


class DaliLoader:
    """Iterate once per epoch, epoch after epoch: (images, labels) batches of this rank."""

    def __init__(self, pipe, *, num_samples: int, batch_size: int) -> None:
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.num_samples = num_samples  # in the whole split, over all ranks
        self.batch_size = batch_size
        self.iterator = DALIGenericIterator(
            [pipe],
            ["images", "labels"],
            reader_name=READER,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for (batch,) in self.iterator:
            images = batch["images"].permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S) view
            yield images, labels_from_digits(batch["labels"])


def check_loader_args(
    shards: Shards, split: str, rank: int, world_size: int, dtype, knobs: dict
) -> None:
    if split not in shards.manifest["splits"]:
        known = ", ".join(shards.manifest["splits"])
        raise ValueError(f"split {split!r} is not in {shards.folder} (it has {known})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"DALI produces float32 or float16 images, not {dtype}")
    unknown = set(knobs) - set(knob_names())
    if unknown:
        raise TypeError(f"unknown pipeline knobs {sorted(unknown)}; known: {knob_names()}")


def dali_device(device: torch.device) -> tuple[bool, int | None]:
    """(whether the pipeline runs on a GPU, DALI's device_id: None for the CPU)."""
    if device.type != "cuda":
        return False, None
    return True, device.index if device.index is not None else torch.cuda.current_device()


def make_loader(
    shards: Shards,
    split: str,
    *,
    batch_size: int,
    num_threads: int = DEFAULT_THREADS,
    image_size: int = 224,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    val_resize: int | None = None,
    **knobs,
) -> DaliLoader:
    """A DALI loader over one split of the shards, for this rank of world_size, with
    num_threads DALI CPU threads.

    device "cpu" runs every operator on the CPU (`device_id=None`); "cuda[:N]" decodes with
    nvJPEG and augments on that GPU. `seed` seeds the reader identically on every rank (the
    epoch reshuffle must agree); augmentations are seeded with seed + rank. `dtype` is
    float32 or float16; knobs are the fields of PipelineKnobs. `val_resize`: the val
    pipeline's shorter side before its centre crop (default image_size / 0.875).

    The train split is read by DALI's webdataset reader, epoch after epoch, the tars
    reordered after each: the input benchmark's baseline. The trainer reads its train order
    through make_feed_loader instead.
    """
    from nvidia.dali import pipeline_def

    check_loader_args(shards, split, rank, world_size, dtype, knobs)
    options = PipelineKnobs(**knobs)
    info = shards.split(split)
    files, index_files = shards.paths(split)
    gpu, device_id = dali_device(torch.device(device))
    build = train_pipeline if split == "train" else val_pipeline
    conditionals = split == "train" and options.auto_augment != "none"  # auto_aug's if/else
    pipe = pipeline_def(build, enable_conditionals=conditionals)(
        files,
        index_files,
        image_size=image_size,
        shard_id=rank,
        num_shards=world_size,
        reader_seed=seed,
        gpu=gpu,
        dtype=dtype,
        knobs=options,
        val_resize=val_resize,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed + rank,  # augmentations: different on every rank
        prefetch_queue_depth=options.prefetch,
    )
    return DaliLoader(pipe, num_samples=info["num_samples"], batch_size=batch_size)


class FedLoader:
    """A TrainFeed's batches through one DALI pipeline for the whole run: iterate once per
    epoch, epoch after epoch. `checkpoint()` is DALI's state of the pipeline after the last
    batch handed out, from which a pipeline of the same shape continues exactly."""

    def __init__(self, pipe) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.iterator = DALIGenericIterator([pipe], ["images", "labels"], auto_reset=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for (batch,) in self.iterator:
            images = batch["images"].permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S) view
            yield images, labels_from_digits(batch["labels"])

    def checkpoint(self) -> str:
        return self.iterator.checkpoints()[0]


def make_feed_loader(
    feed, *, batch_size: int, num_threads: int, device, seed: int, dtype: torch.dtype,
    knobs: PipelineKnobs, checkpoint: str | None = None,
) -> FedLoader:  # fmt: skip
    """The trainer's train loader: DALI over `feed` (train.feed.TrainFeed), decoding and
    augmenting as the webdataset train pipeline does, micro-batches of at most `batch_size`;
    `checkpoint` (FedLoader.checkpoint's) restores a pipeline saved at a position. The feed's
    workers are spawned: DALI refuses to fork once CUDA is initialised."""
    from nvidia.dali import pipeline_def

    gpu, device_id = dali_device(torch.device(device))
    workers = knobs.feed_workers if knobs.feed_workers is not None else (4 if gpu else 0)
    kwargs = {"py_num_workers": workers, "py_start_method": "spawn"} if workers else {}
    pipe = pipeline_def(
        fed_train_pipeline,
        enable_conditionals=knobs.auto_augment != "none",
        enable_checkpointing=True,
    )(
        feed, gpu=gpu, dtype=dtype, knobs=knobs, workers=workers, batch_size=batch_size,
        num_threads=num_threads, device_id=device_id, seed=seed,
        prefetch_queue_depth=knobs.prefetch, checkpoint=checkpoint, **kwargs,
    )  # fmt: skip
    return FedLoader(pipe)
