"""An ImageNet-like folder tree of real-photo JPEGs, for benchmarks and tests.

Crops of the photographs that scikit-image ships (astronaut, cat, coffee, rocket, ...), with
varied crop boxes, scales, orientations and colour gains, saved as JPEGs of about 500x375 at
quality about 92: about what ImageNet's images are (about 500x375 and 110 KB on average).
Needs scikit-image (the dev extra). write_archives and write_kaggle_zip pack such a tree
as the downloads come (nested tars and the devkit; Kaggle's zip).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import random
import shutil
import tarfile
import zipfile
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
# The benchmarks' generated set (prep's and the trainer's) and its shards, made once.
IMAGENET_LIKE = "benchmarks/data/imagenet-like"
IMAGENET_LIKE_SHARDS = "benchmarks/data/imagenet-like-shards"


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


# ---------------------------------------------------------------- the downloads' structure

SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                 "wordnet_height", "num_train_images")  # fmt: skip


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_300_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for f in files:
            _add_bytes(tar, f.name, f.read_bytes())
    return buffer.getvalue()


def meta_mat(wnid_of_id: dict[int, str], internal_nodes: int) -> bytes:
    """A meta.mat with the fields and shape of the devkit's (leaves, then internal nodes)."""
    from scipy.io import savemat

    ids = sorted(wnid_of_id)
    rows = [
        (np.uint16(i), wnid_of_id[i], f"class {i}", "a leaf synset", np.uint8(0),
         np.zeros((1, 0)), np.uint8(0), np.uint16(1300))
        for i in ids
    ]  # fmt: skip
    for j in range(internal_nodes):  # each internal node has every leaf as a child
        rows.append((np.uint16(max(ids) + j + 1), f"n{9000000 + j:08d}", f"node {j}",
                     "an internal WordNet node", np.uint8(len(ids)),
                     np.array([ids], dtype=np.float64), np.uint8(j + 1),
                     np.uint16(0)))  # fmt: skip
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": synsets})
    return buffer.getvalue()


def write_devkit(path: Path, wnid_of_id: dict[int, str], truth: list[int], internal: int) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: data/meta.mat and the val ground truth."""
    with tarfile.open(path, "w:gz") as tar:
        _add_bytes(tar, "ILSVRC2012_devkit_t12/COPYING", b"devkit for tests\n")
        _add_bytes(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta_mat(wnid_of_id, internal))
        text = "".join(f"{i}\n" for i in truth).encode()
        _add_bytes(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", text)


def class_files(folder: Path) -> list[Path]:
    """Every file of a class folder, in an order other than sorted (as archives may hold them)."""
    return sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name[::-1])


def write_archives(folders: str | Path, dest: str | Path, *, internal_nodes: int = 3) -> None:
    """Pack layout-A folders (train/<wnid>/, val/<wnid>/) as image-net.org ships them:
    ILSVRC2012_img_train.tar of class tars, a flat ILSVRC2012_img_val.tar and the devkit, whose
    ILSVRC2012_IDs follow another order than the sorted WordNet ids, as the real ones do."""
    folders, dest = Path(folders), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in (folders / "train").iterdir() if p.is_dir())
    with tarfile.open(dest / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for wnid in classes:
            _add_bytes(tar, f"{wnid}.tar", _tar_bytes(class_files(folders / "train" / wnid)))
    id_of = {wnid: len(classes) - i for i, wnid in enumerate(classes)}  # reversed
    val = {p.name: id_of[p.parent.name] for p in (folders / "val").glob("*/*") if p.is_file()}
    with tarfile.open(dest / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted((folders / "val").glob("*/*"), key=lambda p: p.name[::-1]):
            _add_bytes(tar, path.name, path.read_bytes())
    truth = [val[name] for name in sorted(val)]
    wnid_of_id = {i: wnid for wnid, i in id_of.items()}
    write_devkit(dest / "ILSVRC2012_devkit_t12.tar.gz", wnid_of_id, truth, internal_nodes)


def write_kaggle_zip(folders: str | Path, path: str | Path) -> None:
    """Pack layout-A folders as Kaggle's imagenet-object-localization-challenge.zip: the
    first class stored, the others deflated, the val images flat with LOC_val_solution.csv."""
    folders = Path(folders)
    classes = sorted(p.name for p in (folders / "train").iterdir() if p.is_dir())
    base = "ILSVRC/Data/CLS-LOC"
    rows = []
    with zipfile.ZipFile(path, "w") as z:
        mapping = "".join(f"{w} kaggle class {i}, a name\n" for i, w in enumerate(classes))
        z.writestr("LOC_synset_mapping.txt", mapping)
        for label, wnid in enumerate(classes):
            method = zipfile.ZIP_STORED if label == 0 else zipfile.ZIP_DEFLATED
            for f in class_files(folders / "train" / wnid):
                z.writestr(f"{base}/train/{wnid}/{f.name}", f.read_bytes(), method)
        for f in sorted((folders / "val").glob("*/*"), key=lambda p: p.name[::-1]):
            z.writestr(f"{base}/val/{f.name}", f.read_bytes(), zipfile.ZIP_DEFLATED)
            rows.append(f"{f.stem},{f.parent.name} 1 2 30 40\n")
        z.writestr("LOC_val_solution.csv", "ImageId,PredictionString\n" + "".join(rows))


def ensure_imagenet_like(path: Path, classes: int, per_class: int, workers: int) -> Path:
    """The benchmark set at path, generated unless a complete one is already there."""
    marker = path / "complete.json"
    spec = {"classes": classes, "train_per_class": per_class, "val_per_class": per_class // 10}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return path
    shutil.rmtree(path, ignore_errors=True)
    print(f"bench-prep: generating {classes} x {per_class} ImageNet-like JPEGs in {path}")
    write_imagenet_like(
        path,
        num_classes=classes,
        train_per_class=per_class,
        val_per_class=spec["val_per_class"],
        workers=workers,
    )
    marker.write_text(json.dumps(spec))
    return path


def ensure_archives(data: Path) -> Path:
    """The benchmark set packed as the downloads, beside it (made once)."""
    folder = data.parent / f"{data.name}-archives"
    marker = folder / "complete.json"
    spec = json.loads((data / "complete.json").read_text())
    if not (marker.is_file() and json.loads(marker.read_text()) == spec):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"bench-prep: packing {data} as the image-net.org archives in {folder}")
        write_archives(data, folder)
        marker.write_text(json.dumps(spec))
    return folder
