"""prep from the downloaded archives: the image-net.org tars + devkit, and Kaggle's zip.

The archives are packed from the tiny ImageNet folders (quirky images included) in the
structure of the real downloads, so the shards made from them must be those made from the
folders, byte for byte.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from prep import archives as archives_module
from prep.__main__ import main as prep_main
from prep.archives import INDEX_DIR
from prep.build import PrepOptions, build
from prep.devkit import read_devkit
from prep.errors import PrepError
from prep.imagenet_like import write_archives, write_devkit, write_kaggle_zip
from prep.sources import KAGGLE_ZIP, TRAIN_TAR, VAL_TAR, ArchivePaths, scan
from prep.verify import verify
from tests.test_prep import tree_bytes

DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
OPTIONS = PrepOptions(shard_size=8)  # as tiny_shards


@pytest.fixture(scope="module")
def downloads(tiny_imagenet, tmp_path_factory) -> Path:
    """A folder with the three image-net.org files, packed from the tiny ImageNet."""
    folder = tmp_path_factory.mktemp("downloads")
    write_archives(tiny_imagenet["root"], folder)
    return folder


@pytest.fixture(scope="module")
def kaggle_zip(tiny_imagenet, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kaggle") / KAGGLE_ZIP
    write_kaggle_zip(tiny_imagenet["root"], path)
    return path


@pytest.fixture
def copy_downloads(downloads, tmp_path):
    def copy() -> Path:
        dst = tmp_path / "dl"
        shutil.copytree(downloads, dst)
        return dst

    return copy


def source_free(manifest: dict) -> dict:
    """The manifest less what names where the images came from."""
    m = json.loads(json.dumps(manifest))
    m.pop("source")
    for split in m["splits"].values():
        for entry in split["repaired"] + split["skipped"]:
            entry.pop("path")
    for inputs in m["fingerprint"]["inputs"].values():
        inputs.pop("list_sha256")
    return m


def test_official_archives_give_the_shards_of_the_folders(
    downloads, tiny_shards, tmp_path, monkeypatch
):
    monkeypatch.setattr(archives_module, "PARALLEL_WALK_BYTES", 0)  # walked by 2 processes
    out = tmp_path / "from_archives"
    manifest = build(downloads, out, OPTIONS, workers=2)
    assert tree_bytes(out) == tree_bytes(tiny_shards)
    folders_manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert source_free(manifest) == source_free(folders_manifest)
    assert manifest["source"]["layout"] == "D"
    assert manifest["source"]["archives"] == [
        {"name": name, "bytes": (downloads / name).stat().st_size}
        for name in (TRAIN_TAR, VAL_TAR, DEVKIT)
    ]
    skipped = {e["path"] for e in manifest["splits"]["train"]["skipped"]}
    assert f"{TRAIN_TAR}/n01440764.tar/n01440764_truncated.JPEG" in skipped
    words = read_devkit(str(downloads / DEVKIT)).words  # the devkit's names for its classes
    names = (out / manifest["class_names"]).read_text().splitlines()
    assert names == [words[c] for c in manifest["classes"]] and names[0].startswith("class ")
    verify(out)
    # the same, the archives named one by one (the devkit found beside the val tar)
    named = tmp_path / "named"
    code = prep_main([str(named), "--train-tar", str(downloads / TRAIN_TAR), "--val-tar",
                      str(downloads / VAL_TAR), "--shard-size", "8",
                      "--processes", "1"])  # fmt: skip
    assert code == 0
    assert tree_bytes(named) == tree_bytes(tiny_shards)


def test_kaggle_zip_gives_the_shards_of_the_folders(kaggle_zip, tiny_shards, tmp_path):
    out = tmp_path / "from_zip"
    manifest = build(kaggle_zip, out, OPTIONS, workers=1)  # DATA is the zip itself
    assert tree_bytes(out) == tree_bytes(tiny_shards)
    folders_manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert source_free(manifest) == source_free(folders_manifest)
    assert manifest["source"]["layout"] == "E"
    assert scan(kaggle_zip.parent).layout == "E"  # or the folder that holds it
    names = (out / "class_names.txt").read_text().splitlines()  # LOC_synset_mapping.txt's
    assert names == [f"kaggle class {i}, a name" for i in range(len(manifest["classes"]))]


def test_the_train_tar_is_walked_once_and_again_when_it_changes(
    copy_downloads, tmp_path, monkeypatch
):
    downloads, index = copy_downloads(), tmp_path / "index"
    first = scan(downloads, index_dir=index)
    assert sorted(p.name for p in index.iterdir()) == [f"{TRAIN_TAR}.json.gz", f"{VAL_TAR}.json.gz"]
    walks = []
    real_walk = archives_module.walk_tar

    def counting_walk(archive, **kwargs):
        walks.append(os.path.basename(archive))
        return real_walk(archive, **kwargs)

    monkeypatch.setattr(archives_module, "walk_tar", counting_walk)
    again = scan(downloads, index_dir=index)
    assert walks == [] and again == first  # read from the index: no header read
    os.utime(downloads / TRAIN_TAR, ns=(1, 1))  # another file: walked again
    assert scan(downloads, index_dir=index) == first
    assert walks == [TRAIN_TAR]


def test_devkit_labels_are_checked_against_themselves_and_the_archives(downloads, tmp_path):
    devkit = read_devkit(str(downloads / DEVKIT))
    scanned = scan(downloads)
    # the devkit's IDs run in another order than the sorted WordNet ids: labels are mapped
    assert devkit.wnid_of_id[1] == scanned.classes[-1]
    wnid_of_id, truth = devkit.wnid_of_id, devkit.ground_truth
    bad = tmp_path / DEVKIT
    cases = [
        ({**wnid_of_id, 1: wnid_of_id[2]}, truth, "share a WordNet id"),
        ({i + 1: w for i, w in wnid_of_id.items()}, truth, "are not 1..3"),
        ({**wnid_of_id, 1: "n00000001"}, truth, "no class tar for n00000001"),
        (wnid_of_id, truth[:-1], "has 8 labels but the val archive holds 9 images"),
    ]
    for ids, labels, message in cases:
        write_devkit(bad, ids, labels, internal=2)
        with pytest.raises(PrepError, match=message):
            scan(None, archives=ArchivePaths(downloads / TRAIN_TAR, downloads / VAL_TAR, bad))
    write_devkit(bad, wnid_of_id, truth, internal=1)
    with tarfile.open(bad) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    with tarfile.open(bad, "w:gz") as tar:  # the 2010 devkit's field names
        for name, data in members.items():
            data = data.replace(b"ILSVRC2012_ID", b"ILSVRC2010_ID")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(PrepError, match="lack the fields ILSVRC2012_ID.*not the ILSVRC 2012"):
        read_devkit(str(bad))


def damage(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def class_tar_header_offset(train_tar: Path) -> int:
    """The offset in the train tar of a member header in the middle of the second class tar."""
    with tarfile.open(train_tar) as outer:
        second = outer.getmembers()[1]
        with tarfile.open(fileobj=outer.extractfile(second)) as inner:
            return second.offset_data + inner.getmembers()[2].offset


def test_damaged_archives_are_one_line_errors(copy_downloads, tmp_path):
    downloads = copy_downloads()
    train = downloads / TRAIN_TAR
    original = train.read_bytes()
    damage(train, class_tar_header_offset(train), b"garbage!" * 8)
    with pytest.raises(PrepError, match=r"n01448683\.tar is corrupt: no valid tar header"):
        scan(downloads)
    with tarfile.open(downloads / VAL_TAR) as val:
        last = max(val.getmembers(), key=lambda m: m.offset)
    with open(downloads / VAL_TAR, "r+b") as f:
        f.truncate(last.offset_data + last.size // 2)  # the last member cut short
    train.write_bytes(original)
    with pytest.raises(PrepError, match=f"{VAL_TAR} is truncated: its member {last.name}"):
        scan(downloads)
    train.write_bytes(original[: len(original) // 2])
    with pytest.raises(PrepError, match=f"{TRAIN_TAR}.* truncated"):
        scan(downloads)


def test_a_damaged_image_in_a_good_zip_is_skipped_and_listed(kaggle_zip, tmp_path):
    damaged = tmp_path / KAGGLE_ZIP
    shutil.copy(kaggle_zip, damaged)
    with zipfile.ZipFile(damaged) as z:
        info = z.getinfo("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG")
    damage(damaged, info.header_offset + 30 + len(info.filename) + 100, b"\xff" * 64)
    manifest = build(damaged, tmp_path / "out", OPTIONS, workers=1)
    [entry] = manifest["splits"]["val"]["skipped"]
    assert entry["key"] == "ILSVRC2012_val_00000001"
    assert "unreadable" in entry["reason"]
    assert manifest["splits"]["val"]["num_samples"] == 8


def test_wrong_or_missing_inputs_are_one_line_errors(downloads, kaggle_zip, tmp_path, capsys):
    no_devkit = tmp_path / "no_devkit"
    no_devkit.mkdir()
    for name in (TRAIN_TAR, VAL_TAR):
        (no_devkit / name).symlink_to(downloads / name)
    with pytest.raises(PrepError, match=f"download {DEVKIT} into .*--val_labels"):
        scan(no_devkit)
    no_csv = tmp_path / KAGGLE_ZIP
    with zipfile.ZipFile(kaggle_zip) as src, zipfile.ZipFile(no_csv, "w") as dst:
        for info in src.infolist():
            if info.filename != "LOC_val_solution.csv":
                dst.writestr(info, src.read(info))
    with pytest.raises(PrepError, match="holds no LOC_val_solution.csv.*--val_labels"):
        scan(no_csv)
    with pytest.raises(PrepError, match="Kaggle's zip has its own labels"):
        scan(kaggle_zip, archives=ArchivePaths(devkit=downloads / DEVKIT))
    with pytest.raises(PrepError, match="is a file: pass the folder that holds"):
        scan(downloads / TRAIN_TAR)
    with pytest.raises(PrepError, match="--train_tar .* is a folder"):
        scan(None, archives=ArchivePaths(downloads, downloads / VAL_TAR))
    with pytest.raises(PrepError, match="two train sources"):
        scan(downloads, archives=ArchivePaths(downloads / TRAIN_TAR, downloads / VAL_TAR))
    (no_devkit / "train").mkdir()
    with pytest.raises(PrepError, match="two train sources in .*: train and " + TRAIN_TAR):
        scan(no_devkit, val_labels=tmp_path / "labels.txt")
    code = prep_main([str(no_devkit), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("prep: error: two train")


def test_val_tar_labelled_by_a_labels_file(downloads, tiny_imagenet, tmp_path):
    labels = tmp_path / "labels.txt"
    rows = [f"{p.name} {p.parent.name}" for p in (tiny_imagenet["root"] / "val").glob("*/*")]
    labels.write_text("\n".join(rows) + "\n")
    by_devkit = scan(downloads)
    by_file = scan(None, labels, archives=ArchivePaths(downloads / TRAIN_TAR, downloads / VAL_TAR))
    assert by_file.splits == by_devkit.splits  # the same samples, labels included


def test_a_foreign_out_is_refused_before_anything_is_written(downloads, tmp_path):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(PrepError, match="not empty and holds no shards of ours"):
        build(downloads, out, OPTIONS, workers=1)
    assert [p.name for p in out.iterdir()] == ["thesis.pdf"]
    assert not (out / INDEX_DIR).exists()
