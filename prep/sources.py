"""Find where ImageNet is (extracted folders or the downloaded archives) and list both splits.

Layouts; in every one the class indices are the sorted WordNet ids (as torchvision's
ImageFolder assigns them) and the samples come in the same order, so that the same images
give the same shards from any of them:
- A, B, C: class folders (prep/layout.py).
- D: the downloads from image-net.org, in DATA or named by --train_tar, --val_tar and
  --devkit: ILSVRC2012_img_train.tar (a tar per class), ILSVRC2012_img_val.tar (flat),
  labelled by ILSVRC2012_devkit_t12.tar.gz (or --val_labels).
- E: Kaggle's imagenet-object-localization-challenge.zip, in DATA or given as DATA: layout B
  inside a zip, LOC_val_solution.csv included.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from prep.archives import Entry, archive_entries, read_text_member, zip_entries
from prep.class_names import SYNSET_MAPPING, class_names, parse_synset_mapping
from prep.devkit import DEVKIT, check_devkit, read_devkit
from prep.errors import PrepError
from prep.layout import (
    KAGGLE_ROOT,
    KAGGLE_VAL_CSV,
    Sample,
    Scan,
    checked_splits,
    flat_labels,
    is_image,
    parse_val_labels,
    read_val_labels,
    sample_key,
    scan_folders,
)

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"


@dataclass(frozen=True)
class ArchivePaths:
    """The archives named on the command line (None: not named)."""

    train_tar: str | Path | None = None
    val_tar: str | Path | None = None
    devkit: str | Path | None = None


@dataclass(frozen=True)
class Sources:
    layout: str  # "folders" (A, B or C: prep/layout.py decides), "D" or "E"
    root: Path  # DATA, or the folder of the train archive
    train: Path | None = None  # the train archive (D: the tar; E: the zip)
    val: Path | None = None  # the val archive (D: the tar; E: the zip)
    devkit: Path | None = None  # D: the devkit, unless val_labels is given
    val_labels: Path | None = None  # --val_labels


NO_ARCHIVES = ArchivePaths()


def given_file(path: str | Path, flag: str, expected: str) -> Path:
    """An archive named on the command line: an existing file, not a folder."""
    p = Path(path).resolve()
    if p.is_dir():
        raise PrepError(
            f"{flag} {p} is a folder; {flag} takes the file {expected} "
            "(extracted folders are passed as DATA)"
        )
    if not p.is_file():
        raise PrepError(f"{flag} {p} does not exist")
    return p


def val_devkit(beside: Path, given: ArchivePaths, labels: Path | None) -> Path | None:
    """The devkit that labels the val tar: --devkit, or the one beside it, unless
    --val_labels does."""
    if given.devkit is not None and labels is not None:
        raise PrepError("--devkit and --val_labels both label the val tar: give one of them")
    if given.devkit is not None:
        return given_file(given.devkit, "--devkit", DEVKIT)
    if labels is not None:
        return None
    if not (beside / DEVKIT).is_file():
        raise PrepError(
            f"the val tar's labels are missing: download {DEVKIT} into {beside} (or pass "
            "--devkit FILE, or --val_labels FILE with lines `filename wnid`)"
        )
    return beside / DEVKIT


def named_sources(data: str | Path | None, given: ArchivePaths, labels: Path | None) -> Sources:
    """Layout D from --train_tar and --val_tar."""
    if data is not None:
        raise PrepError(
            f"two train sources: DATA ({data}) and --train_tar/--val_tar; give one of them"
        )
    if given.train_tar is None or given.val_tar is None:
        missing = "--val_tar" if given.train_tar is not None else "--train_tar"
        raise PrepError(f"--train_tar and --val_tar go together: {missing} is missing")
    train = given_file(given.train_tar, "--train_tar", TRAIN_TAR)
    val = given_file(given.val_tar, "--val_tar", VAL_TAR)
    return Sources("D", train.parent, train, val, val_devkit(val.parent, given, labels), labels)


def train_sources(root: Path) -> list[Path]:
    """Everything under root that holds a train split."""
    candidates = (root / KAGGLE_ROOT / "train", root / "train", root / TRAIN_TAR, root / KAGGLE_ZIP)
    return [p for p in candidates if p.exists()]


def find_sources(
    data: str | Path | None, val_labels: str | Path | None, given: ArchivePaths
) -> Sources:
    labels = Path(val_labels).resolve() if val_labels else None
    if given.train_tar is not None or given.val_tar is not None:
        return named_sources(data, given, labels)
    if data is None:
        raise PrepError(
            "no input: give DATA (the folder of the ImageNet downloads or of the extracted "
            "images, or Kaggle's zip), or --train_tar and --val_tar"
        )
    root = Path(data).resolve()
    if root.is_file():
        if zipfile.is_zipfile(root) and given.devkit is not None:
            raise PrepError(f"--devkit labels {VAL_TAR}; Kaggle's zip has its own labels")
        if zipfile.is_zipfile(root):
            return Sources("E", root.parent, root, root, None, labels)
        raise PrepError(
            f"DATA {root} is a file: pass the folder that holds {TRAIN_TAR}, {VAL_TAR} and "
            f"{DEVKIT}, or name them with --train_tar, --val_tar and --devkit"
        )
    if not root.is_dir():
        raise PrepError(f"data folder {root} does not exist")
    found = train_sources(root)
    if len(found) > 1:
        raise PrepError(
            f"two train sources in {root}: {found[0].relative_to(root)} and "
            f"{found[1].relative_to(root)}; move one of them away (prep reads one)"
        )
    if given.devkit is not None and not (found and found[0].name == TRAIN_TAR):
        raise PrepError(f"--devkit labels {VAL_TAR}, and there is none here: drop --devkit")
    if found and found[0].name == TRAIN_TAR:
        if not (root / VAL_TAR).is_file():
            raise PrepError(f"{root} holds {TRAIN_TAR} but no {VAL_TAR}: download it there")
        devkit = val_devkit(root, given, labels)
        return Sources("D", root, found[0], root / VAL_TAR, devkit, labels)
    if found and found[0].name == KAGGLE_ZIP:
        return Sources("E", root, found[0], found[0], None, labels)
    return Sources("folders", root, val_labels=labels)


def class_samples(
    classes: dict[str, list[Entry]], archive: Path, what: str
) -> tuple[list[str], list[Sample], int]:
    """(sorted class ids, train samples by class then name, non-images ignored) from
    {wnid: the members of its class tar or folder}."""
    wnids = sorted(classes)
    samples, ignored, path = [], 0, str(archive)  # one string shared by every location
    for label, wnid in enumerate(wnids):
        members = sorted(classes[wnid], key=lambda e: e.name)
        images = [e for e in members if is_image(os.path.basename(e.name))]
        ignored += len(members) - len(images)
        if not images:
            raise PrepError(f"{archive}: {what} {wnid} holds no images")
        samples += [
            Sample(f"{archive.name}/{e.name}", sample_key(e.name), label, e.location(path))
            for e in images
        ]
    return wnids, samples, ignored


def official_train(entries: list[Entry], archive: Path) -> tuple[list[str], list[Sample], int]:
    """The train split of ILSVRC2012_img_train.tar: its member tars are the classes."""
    tars = [e.name for e in entries if e.name.endswith(".tar") and ".tar/" not in e.name]
    wnid_of_tar = {name: os.path.basename(name)[: -len(".tar")] for name in tars}
    classes: dict[str, list[Entry]] = {wnid: [] for wnid in wnid_of_tar.values()}
    if len(classes) != len(tars):
        raise PrepError(f"{archive} holds two class tars of the same name in other folders")
    ignored = 0
    for e in entries:
        tar, sep, _ = e.name.partition(".tar/")
        if sep:
            classes[wnid_of_tar[tar + ".tar"]].append(e)
        elif e.name not in wnid_of_tar:
            ignored += 1
    if not classes:
        raise PrepError(f"{archive} holds no class tars: is it {TRAIN_TAR}?")
    wnids, samples, more = class_samples(classes, archive, "the class tar of")
    return wnids, samples, ignored + more


def flat_images(members: list[Entry]) -> list[Entry]:
    """The images among the members of a flat val archive or folder, sorted by name."""
    images = (e for e in members if is_image(os.path.basename(e.name)))
    return sorted(images, key=lambda e: e.name)


def val_samples(images: list[Entry], archive: Path, labels: list[int]) -> list[Sample]:
    path = str(archive)
    return [
        Sample(f"{archive.name}/{e.name}", sample_key(e.name), label, e.location(path))
        for e, label in zip(images, labels, strict=True)
    ]


def scan_official(sources: Sources, index_dir: Path | None, workers: int) -> Scan:
    """Layout D: the train tar (walked, class tars included), the val tar and its labels."""
    train, val = sources.train, sources.val
    assert train is not None and val is not None
    entries = archive_entries(str(train), nested=True, index_dir=index_dir, workers=workers)
    classes, train_split, ignored = official_train(entries, train)
    class_index = {wnid: i for i, wnid in enumerate(classes)}
    members = archive_entries(str(val), index_dir=index_dir)
    images = flat_images(members)
    ignored += len(members) - len(images)
    names = [os.path.basename(e.name) for e in images]
    words = None
    if sources.val_labels is not None:
        labels_file = sources.val_labels
        labels = flat_labels(names, read_val_labels(labels_file), str(labels_file), class_index)
    else:
        assert sources.devkit is not None
        devkit = read_devkit(str(sources.devkit))
        check_devkit(devkit, classes, names, str(sources.devkit))
        labels = [class_index[devkit.wnid_of_id[i]] for i in devkit.ground_truth]
        words = devkit.words
    splits = checked_splits(train_split, val_samples(images, val, labels), val)
    archives = tuple(str(p) for p in (train, val, sources.devkit) if p is not None)
    named = class_names(classes, words)
    return Scan(str(sources.root), "D", classes, splits, ignored, archives, named)


def scan_kaggle_zip(sources: Sources) -> Scan:
    """Layout E: layout B inside Kaggle's zip."""
    archive = sources.train
    assert archive is not None
    entries = zip_entries(str(archive))
    marker = f"{KAGGLE_ROOT}/train/"
    prefix = next((e.name[: e.name.index(marker)] for e in entries if marker in e.name), None)
    if prefix is None:
        raise PrepError(f"{archive} holds no {marker}: is it Kaggle's {KAGGLE_ZIP}?")
    train_root, val_root = prefix + marker, f"{prefix}{KAGGLE_ROOT}/val/"
    classes: dict[str, list[Entry]] = {}
    val_members, csv, mapping = [], None, None
    for e in entries:
        if e.name.startswith(train_root):
            wnid, sep, _ = e.name[len(train_root) :].partition("/")
            if sep:
                classes.setdefault(wnid, []).append(e)
        elif e.name.startswith(val_root):
            val_members.append(e)
        elif e.name == prefix + KAGGLE_VAL_CSV:
            csv = e
        elif e.name == prefix + SYNSET_MAPPING:
            mapping = e
    wnids, train_split, ignored = class_samples(classes, archive, "the class folder")
    images = flat_images(val_members)
    ignored += len(val_members) - len(images)
    if sources.val_labels is not None:
        labels_file, table = str(sources.val_labels), read_val_labels(sources.val_labels)
    elif csv is not None:
        labels_file = f"{archive}: {csv.name}"
        table = parse_val_labels(read_text_member(str(archive), csv), csv.name)
    else:
        raise PrepError(
            f"{archive} holds no {KAGGLE_VAL_CSV} (the val labels): pass --val_labels with "
            "that CSV, downloaded on its own"
        )
    names = [os.path.basename(e.name) for e in images]
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    labels = flat_labels(names, table, labels_file, class_index)
    splits = checked_splits(train_split, val_samples(images, archive, labels), val_root)
    known = None
    if mapping is not None:
        where = f"{archive}: {mapping.name}"
        known = parse_synset_mapping(read_text_member(str(archive), mapping), where)
    named = class_names(wnids, known)
    return Scan(str(sources.root), "E", wnids, splits, ignored, (str(archive),), named)


def scan(
    data_dir: str | Path | None,
    val_labels: str | Path | None = None,
    *,
    archives: ArchivePaths = NO_ARCHIVES,
    index_dir: Path | None = None,
    workers: int = 1,
) -> Scan:
    """Find the layout and list both splits. Raises PrepError with a clear message.
    index_dir keeps the member lists of walked tars (OUT/.sources); workers walk in parallel."""
    sources = find_sources(data_dir, val_labels, archives)
    if sources.layout == "D":
        return scan_official(sources, index_dir, workers)
    if sources.layout == "E":
        return scan_kaggle_zip(sources)
    return scan_folders(sources.root, sources.val_labels)
