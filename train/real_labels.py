"""ReaL labels (Beyer et al. 2020, "Are we done with ImageNet?"; real.json of
google-research/reassessed-imagenet): for each of ImageNet's val images, in the order
ILSVRC2012_val_00000001 ... ILSVRC2012_val_00050000, the list of the classes a panel of raters
judged correct, possibly several, possibly none (those images are left out). A top-k
prediction is right when any of its k classes is in the image's list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from models.flags import Flag
from train.metrics import top_classes

VAL_KEY = re.compile(r"ILSVRC2012_val_(\d{8})")
REAL_LABELS = Flag(
    "real_labels",
    str,
    None,
    "ReaL labels of the val images (real.json of google-research/reassessed-imagenet): also "
    "the ReaL top-1 and top-5 over the images it labels (train.compare: tested like val)",
    metavar="REAL_JSON",
)


class RealLabelsError(Exception):
    """real.json does not fit the val shards; the message names what differs."""


def read_real_labels(path: Path, keys: list[str], num_classes: int) -> list[list[int]]:
    """The ReaL lists of the val images `keys` (the shards' order), checked against them:
    one entry per val image, every key an ILSVRC2012_val_ number within the file, every
    class index within the shards' classes."""
    if not path.is_file():
        raise RealLabelsError(f"--real_labels {path}: no such file")
    try:
        entries = json.loads(path.read_text())
    except ValueError as e:
        raise RealLabelsError(f"--real_labels {path}: not JSON ({e})") from None
    if not isinstance(entries, list) or not all(
        isinstance(e, list) and all(isinstance(c, int) for c in e) for e in entries
    ):
        raise RealLabelsError(
            f"--real_labels {path}: not a list with a list of class indices per val image"
        )
    if len(entries) != len(keys):
        raise RealLabelsError(
            f"--real_labels {path} has {len(entries):,} entries but the val shards hold "
            f"{len(keys):,} images: it needs one per val image (ImageNet's: 50,000)"
        )
    out_of_range = [(i, c) for i, e in enumerate(entries) for c in e if not 0 <= c < num_classes]
    if out_of_range:
        i, c = out_of_range[0]
        raise RealLabelsError(
            f"--real_labels {path}: entry {i + 1} (ILSVRC2012_val_{i + 1:08d}) lists class {c}, "
            f"outside the shards' 0 ... {num_classes - 1}"
        )
    lists = []
    for key in keys:
        match = VAL_KEY.fullmatch(key)
        if match is None or not 1 <= int(match[1]) <= len(entries):
            raise RealLabelsError(
                f"--real_labels {path}: the val image {key} of the shards is none of the "
                f"ILSVRC2012_val_00000001 ... ILSVRC2012_val_{len(entries):08d} that it labels"
            )
        lists.append(entries[int(match[1]) - 1])
    return lists


def real_accuracy(logits: torch.Tensor, lists: list[list[int]]) -> dict:
    """ReaL top-1 and top-5 of (N, classes) logits over the images with a non-empty list."""
    top = top_classes(logits, 5).tolist()  # (N, 5)
    scored = [
        (predicted, set(allowed)) for predicted, allowed in zip(top, lists, strict=True) if allowed
    ]
    n = len(scored)
    top1 = sum(predicted[0] in allowed for predicted, allowed in scored)
    top5 = sum(any(p in allowed for p in predicted) for predicted, allowed in scored)
    return {
        "real_top1": top1 / n if n else None,
        "real_top5": top5 / n if n else None,
        "real_images": n,
    }


def real_correct(logits: torch.Tensor, lists: list[list[int]]) -> np.ndarray:
    """Each image's ReaL top-1: 1 when its top class is in its list, 0 when not, -1 when
    the list is empty (the image is left out)."""
    top = top_classes(logits, 1)[:, 0].tolist()
    return np.array(
        [(int(t in allowed) if allowed else -1) for t, allowed in zip(top, lists, strict=True)],
        dtype=np.int8,
    )
