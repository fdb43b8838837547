"""train/data.py: the DALI pipelines in CPU mode on generated shards."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prep.build import PrepOptions, build
from prep.imagenet_like import wnids
from train.data import IMAGENET_MEAN, IMAGENET_STD, labels_from_digits, make_loader
from train.shards import ShardsError, open_shards


def write_dataset(root: Path, train: dict[str, list[Image.Image]], val: dict, quality=95) -> Path:
    """An ImageNet-style folder from PIL images per class."""
    for split, per_class in (("train", train), ("val", val)):
        for wnid, images in per_class.items():
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                image.save(folder / f"{wnid}_{split}_{i}.JPEG", quality=quality)
    return root


def shards_of(tmp_path_factory, name: str, train: dict, val: dict, **options) -> Path:
    root = write_dataset(tmp_path_factory.mktemp(f"{name}_data"), train, val)
    out = tmp_path_factory.mktemp(f"{name}_shards")
    build(root, out, PrepOptions(**options), workers=1)
    return out


@pytest.fixture(scope="module")
def one_per_class_shards(tmp_path_factory) -> Path:
    """13 classes with 2 train and 1 val image each: a label names its sample (val)."""
    from tests.conftest import photo

    classes = wnids(13)
    train = {
        c: [photo(i), photo(i + 1).transpose(Image.FLIP_LEFT_RIGHT)] for i, c in enumerate(classes)
    }
    val = {c: [photo(i + 2)] for i, c in enumerate(classes)}
    return shards_of(tmp_path_factory, "unique", train, val, shard_size=3)


@pytest.fixture(scope="module")
def grey_shards(tmp_path_factory) -> Path:
    grey = Image.new("RGB", (80, 60), (128, 128, 128))
    return shards_of(tmp_path_factory, "grey", {"n0": [grey] * 4}, {"n0": [grey] * 2})


@pytest.fixture(scope="module")
def gradient_shards(tmp_path_factory) -> Path:
    """One image whose red channel is x / W and green channel y / H, 64 times: every output
    pixel tells where in the original it came from."""
    size = 256
    x = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(x[None, :], x[:, None], np.full((size, size), 128.0)), -1)
    image = Image.fromarray(rgb.astype(np.uint8))
    return shards_of(tmp_path_factory, "gradient", {"n0": [image] * 64}, {"n0": [image]})


def collect(loader) -> tuple[list[int], list[int]]:
    """(labels in order, batch sizes) of one epoch."""
    labels, sizes = [], []
    for images, batch_labels in loader:
        assert images.shape[0] == batch_labels.shape[0]
        labels += batch_labels.tolist()
        sizes.append(batch_labels.shape[0])
    return labels, sizes


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_shapes_dtypes_and_channels_last_layout(tiny_shards, split, dtype):
    loader = make_loader(open_shards(tiny_shards), split, batch_size=4, image_size=40, dtype=dtype)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 40, 40)
    assert images.dtype == dtype
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert not images.is_contiguous()  # a view of DALI's NHWC buffer, not a copy
    assert labels.dtype == torch.int64 and labels.shape == (4,)
    assert torch.isfinite(images).all()
    assert images.device.type == "cpu"


@pytest.mark.parametrize("split", ["train", "val"])
def test_uniform_grey_image_normalizes_to_the_expected_values(grey_shards, split):
    loader = make_loader(
        open_shards(grey_shards), split, batch_size=2, image_size=32, color_jitter=False
    )
    images, _ = next(iter(loader))
    expected = torch.tensor(
        [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    )
    per_channel = images.float().mean((0, 2, 3))
    torch.testing.assert_close(per_channel, expected, atol=0.02, rtol=0)
    assert images.float().std((0, 2, 3)).max() < 0.02  # uniform in, uniform out


def test_labels_equal_the_manifests(tiny_shards):
    import webdataset as wds

    manifest_shards = sorted(tiny_shards.glob("val-*.tar"))
    reference = [
        s["cls"]
        for s in wds.WebDataset([str(p) for p in manifest_shards], shardshuffle=False).decode()
    ]
    labels, _ = collect(make_loader(open_shards(tiny_shards), "val", batch_size=4, image_size=32))
    assert labels == reference  # val keeps the manifest's order
    train_reference = Counter(
        s["cls"]
        for s in wds.WebDataset(
            [str(p) for p in sorted(tiny_shards.glob("train-*.tar"))], shardshuffle=False
        ).decode()
    )
    train, _ = collect(make_loader(open_shards(tiny_shards), "train", batch_size=4, image_size=32))
    assert Counter(train) == train_reference


def test_labels_from_digits():
    digits = torch.tensor(
        [list(b"000"), list(b"007"), list(b"042"), list(b"999")], dtype=torch.uint8
    )
    assert labels_from_digits(digits).tolist() == [0, 7, 42, 999]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_val_is_exactly_once_over_ranks_with_partial_and_empty_last_batches(
    one_per_class_shards, world_size
):
    loaders = [
        make_loader(
            open_shards(one_per_class_shards),
            "val",
            batch_size=4,
            image_size=32,
            rank=r,
            world_size=world_size,
        )  # fmt: skip
        for r in range(world_size)
    ]
    for _epoch in range(2):
        results = [collect(loader) for loader in loaders]
        labels = sorted(label for rank_labels, _ in results for label in rank_labels)
        assert labels == list(range(13))  # every val sample exactly once in total
        counts = {len(sizes) for _, sizes in results}
        assert counts == {len(loaders[0])}  # every rank the same number of batches
    last_sizes = [sizes[-1] for _, sizes in results]
    if world_size == 2:
        assert sorted(last_sizes) == [2, 3]  # 6 and 7 samples: partial last batches
    if world_size == 3:
        assert sorted(last_sizes) == [0, 0, 1]  # 4, 4 and 5 samples: two empty last batches


def test_train_epochs_visit_every_sample_once_with_equal_batch_counts(one_per_class_shards):
    world_size = 3
    loaders = [
        make_loader(
            open_shards(one_per_class_shards),
            "train",
            batch_size=4,
            image_size=32,
            rank=r,
            world_size=world_size,
            seed=5,
        )  # fmt: skip
        for r in range(world_size)
    ]
    assert len({len(loader) for loader in loaders}) == 1
    orders = []
    for _epoch in range(3):
        results = [collect(loader) for loader in loaders]
        assert {len(sizes) for _, sizes in results} == {len(loaders[0])}
        labels = [label for rank_labels, _ in results for label in rank_labels]
        assert Counter(labels) == {c: 2 for c in range(13)}  # 26 samples, each once
        orders.append(labels)
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch


def test_train_order_changes_between_epochs_on_one_rank(tiny_shards):
    loader = make_loader(open_shards(tiny_shards), "train", batch_size=4, image_size=32, seed=1)
    first, second = collect(loader)[0], collect(loader)[0]
    assert sorted(first) == sorted(second)
    assert first != second


def test_val_matches_the_torchvision_reference_on_real_photos(tmp_path_factory):
    """Resize(256) + CenterCrop(224) on PIL, against DALI's val pipeline, on scikit-image's
    photographs at their own sizes (odd aspect ratios included) and ImageNet-like crops."""
    import skimage.data
    import torchvision.transforms as T

    from prep.imagenet_like import COLOUR_PHOTOS, write_imagenet_like

    root = tmp_path_factory.mktemp("photos")
    write_imagenet_like(root, num_classes=2, train_per_class=1, val_per_class=4)
    for name in COLOUR_PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()[..., :3])
        image.save(root / "val" / wnids(1)[0] / f"photo_{name}.JPEG", quality=95)
    out = tmp_path_factory.mktemp("photo_shards")
    build(root, out, PrepOptions(), workers=1)
    reference = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    val_files = sorted((root / "val").rglob("*.JPEG"), key=lambda p: p.stem)
    assert len({Image.open(p).size for p in val_files}) >= 6
    expected = torch.stack([reference(Image.open(p).convert("RGB")) for p in val_files])
    images, _ = collect_images(make_loader(open_shards(out), "val", batch_size=8, image_size=224))
    diff = (images.float() - expected).abs()
    # Same output sizes and crop anchors as torchvision; the two antialiased bilinear filters
    # and JPEG decoders differ by rounding only: about 0.15 grey levels on average (0.0025 in
    # normalized units, whose range is about 4.5 wide). A one-pixel misalignment would give
    # 0.05 to 0.2.
    assert diff.flatten(1).mean(1).max() < 0.006, diff.flatten(1).mean(1)
    assert torch.quantile(diff.flatten()[::7], 0.999) < 0.1


def collect_images(loader):
    images, labels = zip(*list(loader), strict=True)
    return torch.cat(images), torch.cat(labels)


def test_flip_and_crop_area_statistics(gradient_shards):
    loader = make_loader(
        open_shards(gradient_shards),
        "train",
        batch_size=16,
        image_size=48,
        color_jitter=False,
        seed=3,
    )
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    areas, aspects, flips = [], [], []
    for _epoch in range(6):
        for images, _ in loader:
            pixels = (images.float() * std + mean) * 255  # back to 0..255
            red, green = pixels[:, 0], pixels[:, 1]
            width = (red[:, :, -1] - red[:, :, 0]).abs().mean(1) / 255 * 256 / 255
            height = (green[:, -1, :] - green[:, 0, :]).mean(1) / 255 * 256 / 255
            areas += (width * height).tolist()
            aspects += (width / height).tolist()
            flips += (red[:, :, 0].mean(1) > red[:, :, -1].mean(1)).tolist()
    n = len(flips)
    assert n == 384
    assert abs(sum(flips) / n - 0.5) < 4 * math.sqrt(0.25 / n)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() > 0.06 and areas.max() < 1.03
    # Uniform area in [0.08, 1] has mean 0.54; crops that do not fit are redrawn, which lowers
    # the mean of the large ones a little.
    assert 0.40 < areas.mean() < 0.62, areas.mean()
    assert (areas < 0.3).mean() > 0.15 and (areas > 0.7).mean() > 0.15
    assert aspects.min() > 0.7 and aspects.max() < 1.4


def test_raw_imagenet_folder_is_refused_with_the_make_shards_command(tiny_imagenet):
    with pytest.raises(ShardsError, match="make shards DATA="):
        make_loader(open_shards(tiny_imagenet["root"]), "train", batch_size=4)


def test_a_missing_shard_is_named(tiny_shards, copy_of):
    out = copy_of(tiny_shards)
    (out / "train-000001.idx").unlink()
    with pytest.raises(ShardsError, match="train-000001.idx is missing"):
        make_loader(open_shards(out), "train", batch_size=4)


def test_bad_arguments(tiny_shards):
    with pytest.raises(ValueError, match="split"):
        make_loader(open_shards(tiny_shards), "test", batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        make_loader(open_shards(tiny_shards), "val", batch_size=4, rank=2, world_size=2)
    with pytest.raises(TypeError, match="unknown pipeline knobs"):
        make_loader(open_shards(tiny_shards), "val", batch_size=4, hw_decoder=1)
    with pytest.raises(ValueError, match="float32 or float16"):
        make_loader(open_shards(tiny_shards), "val", batch_size=4, dtype=torch.bfloat16)
