"""Beyond the val images: evaluation sets added to the shards (`python -m prep eval_set`:
ImageNetV2-style index folders, as a tar.gz and extracted, and Sketch-style WordNet-id
folders), train.evaluate on any split (--split) and with ImageNet's ReaL labels
(--real_labels), on data made by the tests."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from models import build_resnet
from prep.__main__ import main as prep_main
from prep.build import PrepOptions, build
from prep.errors import PrepError
from prep.eval_set import add_eval_set
from prep.imagenet_like import jpeg_bytes, load_photos, random_view, write_imagenet_like
from prep.shardio import read_members
from prep.verify import verify
from tests.test_prep import flip_byte, tree_bytes
from train.evaluate import main as evaluate_main

CLASSES = 6  # more than 5: a top-5 prediction can miss
FAST = ["--workers", "2", "--batch", "4", "--device", "cpu", "--val_res", "64"]
# one entry per val image, ILSVRC2012_val_00000001 ... 00000012: some empty, some several
REAL = [[0], [], [1, 2], [3, 4, 5], [], [5], [0, 1, 2, 3, 4], [2], [], [4, 0], [1], [3]]


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    """Shards of 6 classes whose 12 val images are named as ImageNet's, and seeded weights."""
    root = tmp_path_factory.mktemp("ilsvrc")
    write_imagenet_like(
        root / "data", num_classes=CLASSES, train_per_class=1, val_per_class=2, size=(48, 40)
    )
    build(root / "data", root / "shards", PrepOptions(), workers=1)
    torch.manual_seed(0)
    model = build_resnet(50, num_classes=CLASSES)
    torch.nn.init.normal_(model.fc.weight, std=1.0)  # varied predictions
    torch.save(model.state_dict(), root / "rn50.pth")
    return root


V2_TOP = "imagenetv2-matched-frequency-format-val"  # the folder inside the download


def write_eval_images(folder, names_of_class, per_class, seed, file_name) -> dict[str, int]:
    """JPEGs of real photos in folder/<class folder>/; {path below folder: class folder}."""
    rng = random.Random(seed)
    written = {}
    for label, class_folder in enumerate(names_of_class):
        (folder / class_folder).mkdir(parents=True)
        for i in range(per_class):
            view = random_view(load_photos()[rng.randrange(7)], rng, (40, 32), grey=False)
            data = jpeg_bytes(view, 90)
            name = file_name(data, i)
            (folder / class_folder / name).write_bytes(data)
            written[f"{class_folder}/{name}"] = label
    return written


@pytest.fixture(scope="module")
def eval_sources(ilsvrc, tmp_path_factory):
    """ImageNetV2-style (index folders, hashed names, a truncated image, a stray file) as an
    extracted folder and as a tar.gz packed in another order; a Sketch-style wnid folder."""
    root = tmp_path_factory.mktemp("eval_sources")
    v2 = root / "v2" / V2_TOP
    write_eval_images(v2, [str(i) for i in range(CLASSES)], 2, 1,
                      lambda data, i: f"{hashlib.sha1(data).hexdigest()}.jpeg")  # fmt: skip
    broken = next((v2 / "4").iterdir())
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download: skipped, listed
    (v2 / "4" / "README.txt").write_text("not an image")
    with tarfile.open(root / "imagenetv2-matched-frequency.tar.gz", "w:gz") as tar:
        for path in sorted(v2.rglob("*"), reverse=True):  # not the order of the folder
            tar.add(path, arcname=str(path.relative_to(root / "v2")), recursive=False)
    with tarfile.open(root / "imagenetv2-matched-frequency.tar.gz") as tar:
        assert tar.getnames()[0].endswith(".jpeg")  # an image before its folder
    wnids = (ilsvrc / "shards" / "classes.txt").read_text().split()
    sketch = root / "sketch"
    write_eval_images(sketch, wnids[:4], 2, 2, lambda data, i: f"sketch_{i}.JPEG")
    return root


@pytest.fixture
def shards_copy(ilsvrc, tmp_path):
    def copy(name="shards"):
        shutil.copytree(ilsvrc / "shards", tmp_path / name)
        return tmp_path / name

    return copy


def split_labels(shards, name) -> dict[str, int]:
    """{key: class} of a split, read from its tars."""
    labels = {}
    for shard in json.loads((shards / "manifest.json").read_text())["splits"][name]["shards"]:
        for member, data in read_members(shards / shard["tar"]):
            if member.name.endswith(".cls"):
                labels[member.name[: -len(".cls")]] = int(data)
    return labels


def test_v2_tar_gz_and_its_extracted_folder_give_the_same_split(
    ilsvrc, eval_sources, shards_copy, capsys
):
    from_gz, from_folder = shards_copy("gz"), shards_copy("folder")
    gz = eval_sources / "imagenetv2-matched-frequency.tar.gz"
    assert prep_main(["eval_set", str(from_gz), "imagenetv2", str(gz), "--shard_size", "4"]) == 0
    add_eval_set(from_folder, "imagenetv2", eval_sources / "v2", shard_size=4, workers=2)
    gz_files = {k: v for k, v in tree_bytes(from_gz).items() if k.startswith("imagenetv2-")}
    assert len(gz_files) == 6 and gz_files == {  # 11 images in 3 shards, byte for byte
        k: v for k, v in tree_bytes(from_folder).items() if k.startswith("imagenetv2-")
    }
    manifest = verify(from_gz)  # checks the new split too
    split = manifest["splits"]["imagenetv2"]
    assert split["num_samples"] == 11 and split["counts"]["skipped"] == 1
    assert split["skipped"][0]["path"].startswith(
        f"imagenetv2-matched-frequency.tar.gz/{V2_TOP}/4/"
    )
    assert split["source"]["ignored_files"] == 1
    assert list(manifest["splits"]) == ["train", "val", "imagenetv2"]
    labels = split_labels(from_gz, "imagenetv2")
    assert all(int(key.split("_")[0]) == label for key, label in labels.items())
    assert sorted(set(labels.values())) == list(range(CLASSES))
    capsys.readouterr()
    # Rerunning, from the archive or its folder, does nothing; so does `make shards`.
    before = (from_gz / "manifest.json").read_bytes()
    for source in (gz, eval_sources / "v2"):
        assert prep_main(["eval_set", str(from_gz), "imagenetv2", str(source),
                          "--shard_size", "4"]) == 0  # fmt: skip
        assert "nothing to do" in capsys.readouterr().out
    build(ilsvrc / "data", from_gz, PrepOptions(), workers=1)
    assert "already complete" in capsys.readouterr().out
    assert (from_gz / "manifest.json").read_bytes() == before
    # The trainer's val pipeline reads it.
    json_path = from_gz / "v2.json"
    argv = ["--data_dir", str(from_gz), "--weights", str(ilsvrc / "rn50.pth"), *FAST]
    assert evaluate_main([*argv, "--split", "imagenetv2", "--json", str(json_path)]) == 0
    assert json.loads(json_path.read_text())["images"] == 11
    # A damaged shard of the new split fails verify; make shards --overwrite removes the split.
    flip_byte(from_folder / "imagenetv2-000001.tar", 600)
    with pytest.raises(PrepError, match="imagenetv2-000001.tar: sha256 differs"):
        verify(from_folder)
    build(ilsvrc / "data", from_folder, PrepOptions(shard_size=5), workers=1, overwrite=True)
    assert not list(from_folder.glob("imagenetv2-*"))
    assert list(verify(from_folder)["splits"]) == ["train", "val"]


def test_sketch_wnid_folders_are_keyed_by_class(eval_sources, shards_copy):
    shards = shards_copy()
    add_eval_set(shards, "sketch", eval_sources / "sketch", workers=1)
    wnids = (shards / "classes.txt").read_text().split()
    labels = split_labels(shards, "sketch")
    assert sorted(labels) == sorted(f"{w}_sketch_{i}" for w in wnids[:4] for i in range(2))
    assert all(labels[key] == wnids.index(key.split("_")[0]) for key in labels)
    assert verify(shards)["splits"]["sketch"]["num_samples"] == 8


def test_a_zip_of_the_sketch_folders_gives_the_same_split(eval_sources, shards_copy, tmp_path):
    from_folder, from_zip = shards_copy("folder"), shards_copy("zip")
    add_eval_set(from_folder, "sketch", eval_sources / "sketch", shard_size=3, workers=1)
    archive = tmp_path / "ImageNet-Sketch.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:  # as downloaded: sketch/...
        for path in sorted((eval_sources / "sketch").rglob("*.JPEG"), reverse=True):
            z.write(path, f"sketch/{path.relative_to(eval_sources / 'sketch')}")
    add_eval_set(from_zip, "sketch", archive, shard_size=3, workers=1)
    assert tree_bytes(from_zip) == tree_bytes(from_folder)
    assert verify(from_zip)["splits"]["sketch"]["source"]["kind"] == "archive"


def test_a_stopped_run_resumes_to_the_same_shards(eval_sources, shards_copy, capsys):
    whole, stopped = shards_copy("whole"), shards_copy("stopped")
    add_eval_set(whole, "imagenetv2", eval_sources / "v2", shard_size=2, workers=1)
    with pytest.raises(PrepError, match="--strict: 1 images cannot be decoded"):
        add_eval_set(stopped, "imagenetv2", eval_sources / "v2", shard_size=2, strict=True)
    assert "imagenetv2" not in json.loads((stopped / "manifest.json").read_text())["splits"]
    (stopped / "imagenetv2-000002.tar").unlink()  # as if killed while writing the third shard
    capsys.readouterr()
    add_eval_set(stopped, "imagenetv2", eval_sources / "v2", shard_size=2, workers=1)
    assert "resuming: 5 shards already done" in capsys.readouterr().out
    assert tree_bytes(stopped) == tree_bytes(whole)
    assert not (stopped / ".prep-imagenetv2").exists()


def test_eval_set_refusals_are_one_line_errors(ilsvrc, eval_sources, shards_copy, tmp_path, capsys):
    shards = shards_copy()
    v2 = eval_sources / "v2"

    def refused(*argv) -> str:
        assert prep_main(["eval_set", *map(str, argv)]) == 2
        errors = [e for e in capsys.readouterr().err.splitlines() if e.startswith("prep: error")]
        assert len(errors) == 1
        return errors[0]

    assert "the shards' own val split" in refused(shards, "val", v2)
    assert "use letters, digits and underscores" in refused(shards, "image-net-v2", v2)
    missing = tmp_path / "missing"
    shutil.copytree(v2, missing)
    shutil.rmtree(missing / V2_TOP / "3")
    shutil.rmtree(missing / V2_TOP / "5")
    assert "2 of 0 ... 5 have no images: 3, 5" in refused(shards, "v2", missing)
    beyond = tmp_path / "beyond"
    shutil.copytree(v2, beyond)
    shutil.copytree(beyond / V2_TOP / "0", beyond / V2_TOP / "6")
    assert "class folder 6 is beyond the shards' 6 classes (0 ... 5)" in refused(
        shards, "v2", beyond
    )
    unknown = tmp_path / "unknown"
    shutil.copytree(eval_sources / "sketch", unknown)
    shutil.copytree(next(unknown.iterdir()), unknown / "n99999999")
    assert "1 class folders are not classes of classes.txt: n99999999" in refused(
        shards, "sketch", unknown
    )
    uneven = tmp_path / "uneven"
    shutil.copytree(eval_sources / "sketch", uneven / "a")
    shutil.copytree(eval_sources / "sketch", uneven / "b")
    assert "all the class folders in one folder" in refused(shards, "sketch", uneven)
    truncated = tmp_path / "v2.tar.gz"
    truncated.write_bytes(
        (eval_sources / "imagenetv2-matched-frequency.tar.gz").read_bytes()[:3000]
    )
    assert "is not a readable tar.gz" in refused(shards, "v2", truncated)
    add_eval_set(shards, "sketch", eval_sources / "sketch", workers=1)
    assert "already holds a split sketch, made from" in refused(shards, "sketch", v2)
    assert prep_main(["eval_set", str(shards), "sketch", str(v2), "--overwrite"]) == 0
    assert verify(shards)["splits"]["sketch"]["num_samples"] == 11
    assert not list(shards.glob(".prep-*"))
    (shards / "classes.txt").unlink()
    assert "classes.txt is missing" in refused(shards, "v2", v2)


def evaluate(root, *extra) -> int:
    weights = str(root / "rn50.pth")
    return evaluate_main(["--data_dir", str(root / "shards"), "--weights", weights, *FAST, *extra])


def error_of(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_real_top1_and_top5_match_a_count_by_hand(ilsvrc, tmp_path, capsys):
    real = tmp_path / "real.json"
    real.write_text(json.dumps(REAL))
    args = ["--real_labels", str(real), "--logits", str(tmp_path / "l.npz")]
    assert evaluate(ilsvrc, *args, "--json", str(tmp_path / "e.json")) == 0
    got = np.load(tmp_path / "l.npz")
    right1 = right5 = labelled = 0
    for key, logits in zip(got["keys"], got["logits"], strict=True):
        allowed = REAL[int(str(key)[-8:]) - 1]
        if allowed:
            top = np.argsort(-logits)[:5]
            labelled += 1
            right1 += int(top[0] in allowed)
            right5 += int(any(t in allowed for t in top))
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["real_images"] == labelled == 9 and result["split"] == "val"
    assert result["real_top1"] == pytest.approx(right1 / 9)
    assert result["real_top5"] == pytest.approx(right5 / 9)
    assert 0 < right1 < right5 < 9  # the lists decide: some right, some wrong at each k
    assert "on the 9 images it labels" in capsys.readouterr().out


def test_a_real_json_that_does_not_fit_is_named(ilsvrc, tmp_path, capsys):
    real = tmp_path / "real.json"
    real.write_text(json.dumps(REAL[:-1]))
    assert evaluate(ilsvrc, "--real_labels", str(real)) == 2
    assert "has 11 entries but the val shards hold 12 images" in error_of(capsys)
    real.write_text(json.dumps([*REAL[:-1], [CLASSES]]))
    assert evaluate(ilsvrc, "--real_labels", str(real)) == 2
    assert "entry 12 (ILSVRC2012_val_00000012) lists class 6, outside" in error_of(capsys)
    real.write_text(json.dumps({"not": "a list"}))
    assert evaluate(ilsvrc, "--real_labels", str(real)) == 2
    assert "a list of class indices per val image" in error_of(capsys)
    real.write_text(json.dumps(REAL))
    assert evaluate(ilsvrc, "--real_labels", str(real), "--split", "train") == 2
    assert "not --split train" in error_of(capsys)
    renamed = tmp_path / "renamed"  # the same images, one of them under another name
    shutil.copytree(ilsvrc / "data", renamed / "data")
    first = next((renamed / "data" / "val").rglob("ILSVRC2012_val_00000001.JPEG"))
    first.rename(first.with_name("my_photo.JPEG"))
    build(renamed / "data", renamed / "shards", PrepOptions(), workers=1)
    shutil.copy(ilsvrc / "rn50.pth", renamed / "rn50.pth")
    assert evaluate(renamed, "--real_labels", str(real)) == 2
    assert "the val image my_photo of the shards is none of the ILSVRC2012_val_00000001" in (
        error_of(capsys)
    )


def test_any_split_of_the_shards_is_evaluated_and_recorded(ilsvrc, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(ilsvrc / "shards", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["again"] = manifest["splits"]["val"]  # an evaluation set beside val
    (shards / "manifest.json").write_text(json.dumps(manifest))
    weights = str(ilsvrc / "rn50.pth")
    base = ["--data_dir", str(shards), "--weights", weights, *FAST]
    for split in ("val", "again"):
        argv = [*base, "--json", str(tmp_path / f"{split}.json"), "--logits"]
        assert evaluate_main([*argv, str(tmp_path / f"{split}.npz"), "--split", split]) == 0
    val, again = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("val", "again"))
    assert again["split"] == "again" and again["images"] == val["images"] == 12
    assert again["top1"] == val["top1"] and again["loss"] == pytest.approx(val["loss"])
    assert str(np.load(tmp_path / "again.npz")["split"]) == "again"
    assert list(np.load(tmp_path / "again.npz")["keys"]) == list(
        np.load(tmp_path / "val.npz")["keys"]
    )
    assert "on the 12 again images" in capsys.readouterr().out
    assert evaluate_main([*base, "--split", "sketch"]) == 2
    error = error_of(capsys)
    assert "--split sketch: " in error and "(it has train, val, again)" in error
