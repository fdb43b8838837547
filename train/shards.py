"""The shards folder a run reads: its manifest parsed and checked once, at start-up, by the
entry point (the trainer, train.evaluate, train.bench, --dry_run), and passed down as one
`Shards`. After --cache, `folder` is the RAM copy: nothing after start-up finds the shards
through --data_dir. No other module of train/ opens the manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from prep.class_names import CLASS_NAMES
from prep.shardio import split_name

MANIFEST = "manifest.json"
CLASSES = "classes.txt"
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000
TRAINER_SPLITS = ("train", "val")  # the others are evaluation sets (train.evaluate --split)


class ShardsError(Exception):
    """The shards folder is missing, incomplete or not made by `make shards`."""


@dataclass(frozen=True)
class Shards:
    folder: Path  # the folder read: --data_dir, or its RAM copy with --cache
    manifest: dict  # manifest.json as prep wrote it, checked against the folder

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def manifest_path(self) -> Path:
        """The manifest file of the folder read."""
        return self.folder / MANIFEST

    def split(self, name: str) -> dict:
        """A split's entry: num_samples and the shard list (tar, index, num_samples, ...)."""
        return self.manifest["splits"][name]

    def num_samples(self, name: str) -> int:
        info = self.manifest["splits"].get(name)
        return info["num_samples"] if info else 0

    def paths(self, name: str, order: list[int] | None = None) -> tuple[list[str], list[str]]:
        """(tar files, index files) of a split, in `order` (default: the manifest's)."""
        shards = self.split(name)["shards"]
        order = list(range(len(shards))) if order is None else order
        tars = [str(self.folder / shards[i]["tar"]) for i in order]
        return tars, [str(self.folder / shards[i]["index"]) for i in order]

    def files(self, splits: tuple[str, ...] = TRAINER_SPLITS) -> list[str]:
        """The files of these splits, and the manifest and classes, as names relative to the
        folder (what --cache copies: the evaluation sets that `prep eval_set` adds stay on
        disk, the trainer reads train and val only)."""
        return [MANIFEST, CLASSES, CLASS_NAMES] + [
            name
            for split, info in self.manifest["splits"].items()
            if split in splits
            for s in info["shards"]
            for name in (s["tar"], s["index"])
        ]

    def class_ids(self) -> list[str]:
        """Each class's id (its WordNet id, or folder name), in class-index order."""
        return list(self.manifest["classes"])

    def class_names(self) -> list[str]:
        """Each class's name (class_names.txt, which prep writes beside classes.txt); the ids
        for shards made before it was kept."""
        path, ids = self.folder / CLASS_NAMES, self.class_ids()
        names = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        return names if len(names) == len(ids) else ids

    def digest(self, name: str = "train") -> str:
        """A digest of a split's shards (names, sample counts, sha256): what a position in
        its order refers to."""
        shards = [(s["tar"], s["num_samples"], s["sha256"]) for s in self.split(name)["shards"]]
        return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]

    def moved_to(self, folder: str | Path) -> Shards:
        """The same shards, read from a copy of the folder (the manifest is not read again)."""
        return Shards(Path(folder), self.manifest)

    def sample_keys(self, name: str) -> list[str]:
        """The keys (image file stems) of a split's samples in the order the shards hold
        them, read from the DALI indexes (each sample's line names its members, `<key>.jpg`
        first)."""
        keys = []
        for shard in self.split(name)["shards"]:
            lines = (self.folder / shard["index"]).read_text().splitlines()[1:]
            keys += [split_name(line.split()[3])[0] for line in lines]
        return keys


def is_shards_folder(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def open_shards(folder: str | Path) -> Shards:
    """The shards folder's manifest, checked: every tar and index it lists is there, and
    classes.txt agrees on the number of classes. ShardsError names what is wrong and the fix."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        hint = ""
        if (folder / "train").is_dir() or (folder / "ILSVRC").is_dir():
            hint = (
                f"; {folder} looks like a raw ImageNet folder: convert it first with "
                f"`make shards DATA={folder} SHARDS=shards`"
            )
        raise ShardsError(f"no {MANIFEST} in {folder}: not a shards folder{hint}")
    try:
        manifest = json.loads(path.read_text())
        splits = manifest["splits"]
        num_classes = manifest["num_classes"]
    except (ValueError, KeyError, TypeError) as e:
        raise ShardsError(
            f"{path} is damaged ({type(e).__name__}: {e}); rerun make shards into {folder}"
        ) from None
    for split, info in splits.items():
        for shard in info["shards"]:
            for name in (shard["tar"], shard["index"]):
                if not (folder / name).is_file():
                    raise ShardsError(
                        f"{folder / name} is missing ({split} split); "
                        f"check with `python -m prep verify {folder}`"
                    )
    classes_txt = folder / CLASSES
    listed = len(classes_txt.read_text().split()) if classes_txt.is_file() else num_classes
    if listed != num_classes:
        raise ShardsError(
            f"{classes_txt} lists {listed} classes but the manifest says {num_classes}: the "
            "shards folder is inconsistent; rerun make shards"
        )
    return Shards(folder, manifest)


def train_counts(shards: Shards | None) -> tuple[int, int]:
    """(train images, classes) of the shards; ImageNet's for --synthetic without shards."""
    if shards is None:
        return IMAGENET_TRAIN_IMAGES, IMAGENET_CLASSES
    return shards.num_samples("train"), shards.num_classes
