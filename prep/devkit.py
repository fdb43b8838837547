"""The ILSVRC 2012 devkit: the val labels of the official val tar.

ILSVRC2012_devkit_t12.tar.gz holds data/meta.mat (a struct array `synsets`: the 1,000 leaf
synsets carry ILSVRC2012_IDs 1..1000 and no children, the internal WordNet nodes follow
with higher IDs) and data/ILSVRC2012_validation_ground_truth.txt (the ILSVRC2012_ID of each
val image, one a line, in file-name order).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

from prep.errors import PrepError

DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "num_children")


@dataclass(frozen=True)
class Devkit:
    wnid_of_id: dict[int, str]  # ILSVRC2012_ID of a leaf synset -> its WordNet id
    words: dict[str, str]  # WordNet id of a leaf synset -> its names (`words`), if it has them
    ground_truth: list[int]  # the ILSVRC2012_ID of each val image, in file-name order


def devkit_members(path: str) -> dict[str, bytes]:
    """{META or GROUND_TRUTH: its bytes} of the devkit archive at path (what it holds of them)."""
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                wanted = [s for s in (META, GROUND_TRUTH) if info.name.endswith(s)]
                f = tar.extractfile(info) if wanted and info.isreg() else None
                if f is not None:
                    found[wanted[0]] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PrepError(f"{path} is not a readable devkit ({e}); download it again") from None
    for suffix in (META, GROUND_TRUTH):
        if suffix not in found:
            raise PrepError(f"{path} has no {suffix}: is it {DEVKIT}?")
    return found


def leaf_synsets(meta: bytes, path: str) -> tuple[dict[int, str], dict[str, str]]:
    """({ILSVRC2012_ID: WNID}, {WNID: words}) of meta.mat's leaf synsets, checked against
    themselves."""
    from scipy.io import loadmat

    where = f"{path}: {META}"
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    except KeyError:
        raise PrepError(f"{where} has no `synsets`: it is not the ILSVRC 2012 devkit") from None
    except Exception as e:  # scipy raises ValueError, TypeError, ... on a damaged file
        raise PrepError(f"{where} is not a readable MATLAB file ({e})") from None
    names = synsets.dtype.names or ()
    missing = [f for f in SYNSET_FIELDS if f not in names]
    if missing:
        raise PrepError(
            f"{where}: the synsets lack the fields {', '.join(missing)} (found "
            f"{', '.join(names)}): it is not the ILSVRC 2012 devkit ({DEVKIT})"
        )
    leaves, words = {}, {}
    for s in synsets.reshape(-1):
        if int(s["num_children"]) == 0:
            leaves[int(s["ILSVRC2012_ID"])] = str(s["WNID"])
            if "words" in names:
                words[str(s["WNID"])] = str(s["words"])
    if sorted(leaves) != list(range(1, len(leaves) + 1)):
        raise PrepError(f"{where}: the leaf synsets' ILSVRC2012_IDs are not 1..{len(leaves)}")
    if len(set(leaves.values())) != len(leaves):
        raise PrepError(f"{where}: two leaf synsets share a WordNet id")
    return leaves, words


def read_ground_truth(text: str, path: str, num_classes: int) -> list[int]:
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = int(line)
        except ValueError:
            value = 0
        if not 1 <= value <= num_classes:
            raise PrepError(
                f"{path}: {GROUND_TRUTH}:{number}: expected an ILSVRC2012_ID in "
                f"1..{num_classes}, got {line.strip()!r}"
            )
        ids.append(value)
    return ids


def read_devkit(path: str) -> Devkit:
    members = devkit_members(path)
    leaves, words = leaf_synsets(members[META], path)
    truth = members[GROUND_TRUTH].decode()
    return Devkit(leaves, words, read_ground_truth(truth, path, len(leaves)))


def check_devkit(devkit: Devkit, classes: list[str], val_names: list[str], path: str) -> None:
    """The devkit's classes are the train tar's, and it labels every val image."""
    wnids = set(devkit.wnid_of_id.values())
    if wnids != set(classes):
        absent = sorted(wnids - set(classes))
        extra = sorted(set(classes) - wnids)
        raise PrepError(
            f"{path} does not match the train archive: "
            + (f"no class tar for {', '.join(absent[:5])}; " if absent else "")
            + (f"class tars {', '.join(extra[:5])} are not leaf synsets; " if extra else "")
            + f"the devkit has {len(wnids)} classes, the train archive {len(classes)}"
        )
    if len(devkit.ground_truth) != len(val_names):
        raise PrepError(
            f"{path}: {GROUND_TRUTH} has {len(devkit.ground_truth)} labels but the val "
            f"archive holds {len(val_names)} images: are they the same year's files?"
        )
