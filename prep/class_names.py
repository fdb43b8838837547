"""Class names: what each class index means to a person, kept beside classes.txt (the WordNet
ids) as class_names.txt, one name a line in class-index order, for export and predict.

Where a name comes from, first found: the devkit's meta.mat (`words` of each leaf synset),
Kaggle's LOC_synset_mapping.txt (`wnid names`, one a line), ImageNet-1k's names for its
WordNet ids (imagenet_classes.txt here: the same lines as Kaggle's file), and otherwise the
class folder's own name.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from prep.errors import PrepError

CLASS_NAMES = "class_names.txt"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.txt")


def parse_synset_mapping(text: str, where: str) -> dict[str, str]:
    """{wnid: names} of LOC_synset_mapping.txt's lines `n01440764 tench, Tinca tinca`."""
    names = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not words.strip():
            raise PrepError(f"{where}:{number}: expected `wnid names`, got {line.strip()!r}")
        names[wnid] = words.strip()
    return names


@cache
def imagenet_names() -> dict[str, str]:
    """ImageNet-1k's {wnid: names}, as the devkit and Kaggle's mapping give them."""
    return parse_synset_mapping(IMAGENET_CLASSES.read_text(encoding="utf-8"), str(IMAGENET_CLASSES))


def one_line(name: str) -> str:
    return " ".join(name.split())


def class_names(classes: list[str], known: dict[str, str] | None = None) -> tuple[str, ...]:
    """Each class's name: from `known` (the devkit's or Kaggle's), ImageNet-1k's for its
    WordNet ids, or the class (folder) name itself."""
    known = known or {}
    table = imagenet_names()
    return tuple(one_line(known.get(c) or table.get(c) or c) for c in classes)


def mapping_beside(root: Path) -> dict[str, str] | None:
    """The names of LOC_synset_mapping.txt in the data folder (Kaggle's layout), if there."""
    path = root / SYNSET_MAPPING
    return (
        parse_synset_mapping(path.read_text(encoding="utf-8"), str(path))
        if path.is_file()
        else None
    )


def names_text(names: tuple[str, ...] | list[str]) -> bytes:
    return "".join(f"{n}\n" for n in names).encode()
