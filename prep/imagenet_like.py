"""An ImageNet-like folder tree of real-photo JPEGs, for benchmarks and tests.

Crops of the photographs that scikit-image ships (astronaut, cat, coffee, rocket, ...), with
varied crop boxes, scales, orientations and colour gains, saved as JPEGs of about 500x375 at
quality about 92: about what ImageNet's images are (about 500x375 and 110 KB on average).
Needs scikit-image (the dev extra).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import random
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

COLOUR_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
GREY_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel", "clock", "cell")
TEXTURES = ("grass", "gravel", "brick")


def wnids(n: int) -> list[str]:
    """n WordNet-style class ids, sorted (n01440764 is ImageNet's first class)."""
    return [f"n{1440764 + 7919 * i:08d}" for i in range(n)]


@lru_cache(maxsize=1)
def load_photos() -> list[np.ndarray]:
    """The bundled scikit-image photographs as RGB uint8 arrays (grey ones replicated)."""
    try:
        import skimage.data
    except ImportError as e:
        raise SystemExit(
            "the ImageNet-like set is cut from scikit-image's photos: pip install scikit-image "
            "(it is in the dev extra: make install)"
        ) from e
    photos = [getattr(skimage.data, name)()[..., :3] for name in COLOUR_PHOTOS]
    photos += [np.repeat(getattr(skimage.data, name)()[..., None], 3, 2) for name in GREY_PHOTOS]
    return photos


@lru_cache(maxsize=1)
def load_textures() -> list[np.ndarray]:
    """Real textures (grass, gravel, brick) at 512x512, zero-mean: fine detail to overlay."""
    import skimage.data

    textures = [getattr(skimage.data, name)().astype(np.float32) for name in TEXTURES]
    return [t - t.mean() for t in textures]


def random_view(
    photo: np.ndarray, rng: random.Random, size: tuple[int, int], grey: bool
) -> Image.Image:
    """A random crop of a photo, resized to size (w, h), with random colour gains, and a real
    texture plus sensor-like noise overlaid: the bundled photos are smoother than ImageNet's,
    and without the detail their JPEGs would be a third of ImageNet's size."""
    h, w = photo.shape[:2]
    area = rng.uniform(0.25, 1.0) * h * w
    aspect = size[0] / size[1] * rng.uniform(0.8, 1.25)
    cw = min(w, max(8, round((area * aspect) ** 0.5)))
    ch = min(h, max(8, round((area / aspect) ** 0.5)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = photo[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    view = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(view, np.float32)  # (h, w, 3)
    texture = load_textures()[rng.randrange(len(TEXTURES))]
    ty, tx = rng.randint(0, 512 - min(512, size[1])), rng.randint(0, 512 - min(512, size[0]))
    patch = texture[ty : ty + size[1], tx : tx + size[0]]
    if patch.shape != (size[1], size[0]):
        patch = np.resize(patch, (size[1], size[0]))
    gains = np.array([rng.uniform(0.7, 1.3) for _ in range(3)], np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 5, pixels.shape)
    pixels = pixels * gains + rng.uniform(-20, 20) + 0.8 * patch[..., None] + noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.convert("L") if grey else image


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_class(
    base: Path,
    label: int,
    wnid: str,
    *,
    train_per_class: int,
    val_per_class: int,
    size: tuple[int, int],
    quality: int,
    flat_val: bool,
    seed: int,
) -> list[str]:
    """Write one class's train and val images; return its val rows for Kaggle's CSV."""
    rng = random.Random(seed * 100_003 + label)
    photos = load_photos()
    (base / "train" / wnid).mkdir(parents=True, exist_ok=True)
    val_folder = base / "val" if flat_val else base / "val" / wnid
    val_folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(train_per_class + val_per_class):
        w, h = size if rng.random() < 0.75 else size[::-1]
        photo = photos[rng.randrange(len(photos))]
        view = random_view(photo, rng, (w, h), grey=rng.random() < 0.03)
        data = jpeg_bytes(view, quality + rng.randint(-4, 4))
        if i < train_per_class:
            (base / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(data)
            continue
        name = f"ILSVRC2012_val_{label * val_per_class + i - train_per_class + 1:08d}"
        (val_folder / f"{name}.JPEG").write_bytes(data)
        rows.append(f"{name},{wnid} 10 10 100 100\n")
    return rows


def write_imagenet_like(
    root: str | Path,
    *,
    num_classes: int = 10,
    train_per_class: int = 20,
    val_per_class: int = 5,
    size: tuple[int, int] = (500, 375),
    quality: int = 92,
    layout: str = "A",
    seed: int = 0,
    workers: int = 1,
) -> list[str]:
    """Write root/train/<wnid>/*.JPEG and root/val/... in layout A (class folders) or B (the
    Kaggle download, flat val and LOC_val_solution.csv); return the class ids."""
    classes = wnids(num_classes)
    root = Path(root)
    base = root / "ILSVRC/Data/CLS-LOC" if layout == "B" else root
    write = partial(
        write_class,
        base,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        size=size,
        quality=quality,
        flat_val=layout == "B",
        seed=seed,
    )
    if workers > 1:
        with ProcessPoolExecutor(workers, mp.get_context("spawn")) as pool:
            rows = list(pool.map(write, range(num_classes), classes))
    else:
        rows = [write(label, wnid) for label, wnid in enumerate(classes)]
    if layout == "B":
        csv_rows = "".join(r for class_rows in rows for r in class_rows)
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + csv_rows)
    return classes
