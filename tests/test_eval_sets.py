"""train.evaluate beyond the val images: any split of the shards (--split, e.g. an evaluation
set beside val) and ImageNet's ReaL labels (--real_labels), on shards made by the tests."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from models import build_resnet
from prep.build import PrepOptions, build
from prep.imagenet_like import write_imagenet_like
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
    assert list(np.load(tmp_path / "again.npz")["keys"]) == list(
        np.load(tmp_path / "val.npz")["keys"]
    )
    assert "on the 12 again images" in capsys.readouterr().out
    assert evaluate_main([*base, "--split", "sketch"]) == 2
    error = error_of(capsys)
    assert "--split sketch: " in error and "(it has train, val, again)" in error
