"""Shared fixtures: tiny ImageNet-style folders of real JPEGs, and shards made from them."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from prep.build import PrepOptions, build
from prep.imagenet_like import write_imagenet_like

TINY = {"num_classes": 3, "train_per_class": 6, "val_per_class": 3, "size": (64, 48)}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def photo(seed: int, size=(64, 48)) -> Image.Image:
    """A real-photo crop (via the ImageNet-like generator's photos)."""
    from prep.imagenet_like import load_photos

    arr = load_photos()[seed % 7]
    return Image.fromarray(arr).resize(size)


def add_problem_files(class_dir: Path, prefix: str) -> dict[str, str]:
    """The troublemakers of the real ILSVRC train set; returns file name -> expected status."""
    img = photo(3)
    files = {
        f"{prefix}_cmyk.JPEG": (jpeg(img.convert("CMYK")), "repaired"),
        f"{prefix}_png.JPEG": (_png(img), "repaired"),
        f"{prefix}_grey.JPEG": (jpeg(img.convert("L")), "stored"),
        f"{prefix}_truncated.JPEG": (jpeg(img)[:300], "skipped"),
        f"{prefix}_empty.JPEG": (b"", "skipped"),
    }
    for name, (data, _) in files.items():
        (class_dir / name).write_bytes(data)
    (class_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" * 10)
    (class_dir / "notes.txt").write_text("not an image\n")
    return {name: status for name, (_, status) in files.items()}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_tiny_imagenet(root: Path, layout: str = "A", seed: int = 0) -> dict:
    """A tiny ImageNet in layout A or B with problem files in the first train class."""
    classes = write_imagenet_like(root, layout=layout, seed=seed, **TINY)
    base = root / "ILSVRC/Data/CLS-LOC" if layout == "B" else root
    problems = add_problem_files(base / "train" / classes[0], classes[0])
    return {"root": root, "base": base, "classes": classes, "problems": problems}


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory) -> dict:
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet_a"), "A")


@pytest.fixture(scope="session")
def tiny_shards(tiny_imagenet, tmp_path_factory) -> Path:
    """Shards of the tiny ImageNet (3 train shards of 8, 2 val shards of 5 at most)."""
    out = tmp_path_factory.mktemp("shards")
    build(tiny_imagenet["root"], out, PrepOptions(shard_size=8), workers=2)
    return out


@pytest.fixture
def copy_of(tmp_path):
    def copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return copy


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of a given size (needs root, as CI has; else the test is skipped), to fill
    a disk for real; unmounted after the test."""
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)
