"""The extracted-folder layouts: list every image of each split with its label; the samples
and scans that every layout (archives included: prep/sources.py) makes.

Layouts:
- A: DATA/train/<wnid>/*.JPEG and DATA/val/<wnid>/*.JPEG (class folders).
- B: the Kaggle download: DATA/ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/} with a flat val
  folder labelled by DATA/LOC_val_solution.csv (ImageId, PredictionString: first token = wnid).
- C: DATA/train/<wnid>/ with a flat DATA/val/ labelled by --val_labels FILE (`filename wnid`).
Class indices are the sorted class-folder names, as torchvision's ImageFolder assigns them.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from prep.archives import Location
from prep.class_names import class_names, mapping_beside
from prep.errors import PrepError

# torchvision's ImageFolder extensions; anything else (.DS_Store, .txt, ...) is ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)
KAGGLE_ROOT = Path("ILSVRC/Data/CLS-LOC")
KAGGLE_VAL_CSV = "LOC_val_solution.csv"
MAX_KEY_LENGTH = 90  # a ustar member name holds 100 bytes: key + ".jpg"


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the data root
    key: str  # WebDataset key: the file stem, with characters outside [A-Za-z0-9_-] as "_"
    label: int
    where: Location | None = None  # inside an archive; None: the file root/path


@dataclass(frozen=True)
class Scan:
    root: str
    layout: str  # "A", "B", "C" (folders), "D" (image-net.org archives) or "E" (Kaggle zip)
    classes: list[str]
    splits: dict[str, list[Sample]]  # "train" (sorted by class, then path), "val" (by key)
    ignored: int  # non-image files seen and ignored
    archives: tuple[str, ...] = ()  # the archives read (absolute paths); () for folders
    names: tuple[str, ...] = ()  # each class's name (prep.class_names); () for the classes


def is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def sample_key(filename: str) -> str:
    stem = os.path.splitext(os.path.basename(filename))[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Images under folder (recursively, sorted), and how many other files were ignored."""
    images, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image(name):
                images.append(Path(dirpath) / name)
            else:
                ignored += 1
    return images, ignored


def class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_val_labels(path: Path) -> dict[str, str]:
    """`filename wnid` lines (layout C) or the Kaggle CSV (layout B) -> {filename or stem: wnid}."""
    if not path.is_file():
        raise PrepError(f"val labels file {path} does not exist")
    return parse_val_labels(path.read_text(), str(path))


def parse_val_labels(text: str, path: str) -> dict[str, str]:
    """The text of a val labels file (`filename wnid` lines, or a .csv: Kaggle's CSV)."""
    labels: dict[str, str] = {}
    with io.StringIO(text, newline="") as f:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(
                reader.fieldnames
            ):
                raise PrepError(
                    f"{path}: expected the columns ImageId,PredictionString "
                    f"(Kaggle's LOC_val_solution.csv), found {reader.fieldnames}"
                )
            for row in reader:
                tokens = (row["PredictionString"] or "").split()
                if not tokens:
                    raise PrepError(f"{path}: no class for {row['ImageId']}")
                labels[row["ImageId"]] = tokens[0]
        else:
            for number, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise PrepError(f"{path}:{number}: expected `filename wnid`, got {line!r}")
                labels[parts[0]] = parts[1]
    if not labels:
        raise PrepError(f"val labels file {path} holds no labels")
    return labels


def find_folders(root: Path, val_labels: Path | None) -> tuple[str, Path, Path, Path | None]:
    """(layout, train folder, val folder, labels file for a flat val folder or None)."""
    if not root.is_dir():
        raise PrepError(f"data folder {root} does not exist")
    kaggle = root / KAGGLE_ROOT
    if (kaggle / "train").is_dir():
        train, val = kaggle / "train", kaggle / "val"
        labels = val_labels or root / KAGGLE_VAL_CSV
        if not val.is_dir():
            raise PrepError(f"Kaggle layout: no val folder at {val}")
        if not labels.is_file():
            raise PrepError(
                f"Kaggle layout: the val labels {labels} are missing; download "
                f"{KAGGLE_VAL_CSV} beside ILSVRC/ or pass --val_labels FILE"
            )
        return "B", train, val, labels
    train, val = root / "train", root / "val"
    if not train.is_dir():
        raise PrepError(
            f"no train/ folder in {root}: expected {root}/train/<wnid>/*.JPEG and "
            f"{root}/val/<wnid>/*.JPEG, or the Kaggle download ({root}/{KAGGLE_ROOT}/train)"
        )
    if not val.is_dir():
        raise PrepError(f"no val/ folder in {root}: expected {val}/<wnid>/*.JPEG or a flat {val}")
    flat = any(e.is_file() and is_image(e.name) for e in os.scandir(val))
    if flat or val_labels is not None:
        if val_labels is None:
            raise PrepError(
                f"{val} holds images without class folders: pass --val_labels FILE "
                "(lines `filename wnid`)"
            )
        return "C", train, val, val_labels
    return "A", train, val, None


def scan_train(train: Path, root: Path) -> tuple[list[str], list[Sample], int]:
    classes = class_folders(train)
    if not classes:
        raise PrepError(f"no class folders in {train}: expected {train}/<wnid>/*.JPEG")
    samples, ignored = [], 0
    for label, wnid in enumerate(classes):
        images, skipped = list_images(train / wnid)
        ignored += skipped
        if not images:
            raise PrepError(f"class folder {train / wnid} holds no images")
        samples += [Sample(str(p.relative_to(root)), sample_key(p.name), label) for p in images]
    return classes, samples, ignored


def scan_val_folders(val: Path, root: Path, class_index: dict[str, int]) -> tuple[list, int]:
    samples, ignored = [], 0
    for wnid in class_folders(val):
        if wnid not in class_index:
            raise PrepError(f"val class folder {val / wnid} is not among the train classes")
        images, skipped = list_images(val / wnid)
        ignored += skipped
        samples += [
            Sample(str(p.relative_to(root)), sample_key(p.name), class_index[wnid]) for p in images
        ]
    return samples, ignored


def flat_labels(
    names: list[str], labels: dict[str, str], labels_file: str, class_index: dict[str, int]
) -> list[int]:
    """The class index of each image of a flat val folder or archive, by its labels file."""
    found, unlabelled, unknown = [], [], []
    for name in names:
        wnid = labels.get(name, labels.get(os.path.splitext(name)[0]))
        if wnid is None:
            unlabelled.append(name)
        elif wnid not in class_index:
            unknown.append(f"{name} ({wnid})")
        else:
            found.append(class_index[wnid])
    if unlabelled:
        raise PrepError(
            f"{len(unlabelled)} val images have no label in {labels_file}, "
            f"e.g. {', '.join(unlabelled[:5])}"
        )
    if unknown:
        raise PrepError(
            f"{len(unknown)} val images are labelled with a class that is not a train class "
            f"folder, e.g. {', '.join(unknown[:5])}"
        )
    return found


def scan_val_flat(val: Path, root: Path, labels_file: Path, class_index: dict[str, int]):
    images, ignored = list_images(val)
    names = [p.name for p in images]
    labels = flat_labels(names, read_val_labels(labels_file), str(labels_file), class_index)
    samples = [
        Sample(str(p.relative_to(root)), sample_key(p.name), label)
        for p, label in zip(images, labels, strict=True)
    ]
    return samples, ignored


def check_unique_keys(split: str, samples: list[Sample]) -> None:
    seen: dict[str, str] = {}
    for s in samples:
        if s.key in seen:
            raise PrepError(
                f"two {split} images have the same key {s.key!r}: {seen[s.key]} and {s.path}; "
                "rename one (the key is the file name without extension)"
            )
        if len(s.key) > MAX_KEY_LENGTH:
            raise PrepError(f"{s.path}: file name longer than {MAX_KEY_LENGTH} characters")
        seen[s.key] = s.path


def checked_splits(train: list[Sample], val: list[Sample], where: object) -> dict:
    """{"train": train, "val": val sorted by key}, after the checks every layout shares."""
    if not val:
        raise PrepError(f"no val images in {where}")
    val = sorted(val, key=lambda s: s.key)
    for split, samples in (("train", train), ("val", val)):
        check_unique_keys(split, samples)
    return {"train": train, "val": val}


def scan_folders(root: Path, val_labels: Path | None) -> Scan:
    """Layouts A, B and C: list both splits of the class folders under root."""
    layout, train, val, labels_file = find_folders(root, val_labels)
    classes, train_samples, ignored = scan_train(train, root)
    class_index = {wnid: i for i, wnid in enumerate(classes)}
    if labels_file is None:
        val_samples, more = scan_val_folders(val, root, class_index)
    else:
        val_samples, more = scan_val_flat(val, root, labels_file, class_index)
    splits = checked_splits(train_samples, val_samples, val)
    names = class_names(classes, mapping_beside(root))
    return Scan(str(root), layout, classes, splits, ignored + more, names=names)
