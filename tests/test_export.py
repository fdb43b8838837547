"""After training: train.export in each format, loaded back by its own reader with our
model's logits; the model card's figures; train.predict's top-1 against train.evaluate's
per-image predictions; --init_weights from torchvision's weights; bad input as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_resnet
from tests.test_train import run_main
from train import checkpoint
from train.evaluate import main as evaluate_main
from train.export import FILES, export
from train.export import main as export_main
from train.predict import main as predict_main
from train.weights import build_model, read_weights

EVALUATE = ["--workers", "2", "--batch", "4"]


@pytest.fixture(scope="module")
def v15_run(tiny_shards, tmp_path_factory) -> Path:
    """A finished two-epoch v1.5 run with an EMA on the tiny shards (32x32 crops)."""
    out = tmp_path_factory.mktemp("v15_run")
    assert run_main(tiny_shards, out, "--epochs", "2", "--variant", "v1.5", "--ema") == 0
    return out


def images_of(size: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


def our_logits(run: Path, images: torch.Tensor) -> torch.Tensor:
    """What our network computes with the weights export takes (best.pt's best weights)."""
    with torch.no_grad():
        return build_model(read_weights(run)).eval()(images)


def exported_logits(fmt: str, folder: Path, images: torch.Tensor, classes: int) -> torch.Tensor:
    """The exported file's logits, read back as its own format's users read it."""
    path = folder / FILES[fmt]
    with torch.no_grad():
        if fmt == "torchvision":
            import torchvision

            model = torchvision.models.resnet50(num_classes=classes)
            model.load_state_dict(torch.load(path, weights_only=True), strict=True)
            return model.eval()(images)
        if fmt == "safetensors":
            from safetensors.torch import load_file

            model = build_resnet(50, variant="v1.5", num_classes=classes)
            model.load_state_dict(load_file(str(path)), strict=True)
            return model.eval()(images)
        if fmt == "pt2":
            return torch.export.load(str(path)).module()(images)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchvision", "safetensors", "pt2", "onnx"])
def test_each_format_loads_back_and_computes_our_logits(v15_run, tmp_path, fmt):
    out = tmp_path / fmt
    assert export_main([str(v15_run), "--format", fmt, "--out", str(out)]) == 0
    images = images_of(32)  # another batch size than the export's example: dynamic
    expected = our_logits(v15_run, images)
    got = exported_logits(fmt, out, images, expected.shape[1])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet50" and config["num_classes"] == 3
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["crop_pct"] == pytest.approx(32 / 37, abs=1e-4)
    assert config["label_names"][0] == "n01440764"
    assert config["label_descriptions"]["n01440764"] == "tench, Tinca tinca"
    saved = checkpoint.load(v15_run / "best.pt")
    assert config["weights"] == saved["best_weights"]  # the weights that scored best
    assert (out / "README.md").is_file()


@pytest.mark.slow
def test_the_model_card_gives_the_runs_own_figures(v15_run, tmp_path):
    record = export(v15_run, "safetensors", tmp_path / "card")
    card = (tmp_path / "card" / "README.md").read_text()
    summary = json.loads((v15_run / "training_summary.json").read_text())
    best = f"| {100 * summary['best_top1']:.2f}% | {100 * summary['best_top5']:.2f}% |"
    final = f"| {100 * summary['final_top1']:.2f}% | {100 * summary['final_top5']:.2f}% |"
    assert f"run's best (epoch {summary['best_epoch']})" in card and best in card
    assert f"run's final (epoch {summary['epochs_completed']})" in card and final in card
    assert "## Literature (not measured here)" in card  # labelled as literature
    assert record["code_version"] in card and f"{summary['epochs_completed']} epochs" in card


@pytest.mark.slow
def test_predict_gives_evaluates_top1_on_the_val_images(
    v15_run, tiny_shards, tiny_imagenet, tmp_path, capsys
):
    logits = tmp_path / "val.npz"
    assert evaluate_main(["--data_dir", str(tiny_shards), "--weights", str(v15_run),
                          "--logits", str(logits), *EVALUATE]) == 0  # fmt: skip
    saved = np.load(logits)
    evaluated = dict(zip(saved["keys"].tolist(), saved["logits"].argmax(1).tolist(), strict=True))
    exported = tmp_path / "export"
    assert export_main([str(v15_run), "--format", "safetensors", "--out", str(exported)]) == 0
    val = tiny_imagenet["root"] / "val"
    for weights in (v15_run, exported / "model.safetensors"):
        table, listing = tmp_path / "top.json", tmp_path / "top.csv"
        code = predict_main([str(val), "--weights", str(weights), "--topk", "2",
                             "--json", str(table), "--csv", str(listing)])  # fmt: skip
        assert code == 0
        rows = json.loads(table.read_text())["images"]
        predicted = {Path(r["image"]).stem: r["top"][0]["class"] for r in rows}
        assert predicted == evaluated, weights
        first = rows[0]["top"]
        assert len(first) == 2 and first[0]["probability"] >= first[1]["probability"]
        names = (tiny_shards / "class_names.txt").read_text().splitlines()
        assert all(t["name"] == names[t["class"]] for r in rows for t in r["top"])
        with listing.open() as f:
            assert len(list(csv.DictReader(f))) == 2 * len(rows)
    # the same images through the exported weights with evaluate: the checkpoint's figures
    torchvision_export = tmp_path / "torchvision"
    assert export_main([str(v15_run), "--format", "torchvision", "--out",
                        str(torchvision_export)]) == 0  # fmt: skip
    every = (v15_run, exported / "model.safetensors", torchvision_export / "model.pth")
    figures = []
    for weights in every:
        report = tmp_path / "report.json"
        assert evaluate_main(["--data_dir", str(tiny_shards), "--weights", str(weights),
                              "--json", str(report), *EVALUATE]) == 0  # fmt: skip
        r = json.loads(report.read_text())
        figures.append((r["top1"], r["top5"], r["loss"], r["image_size"]))
    assert figures[0] == figures[1] == figures[2], figures  # the export knows its crop, too
    capsys.readouterr()


@pytest.mark.slow
def test_an_unreadable_image_is_named_and_skipped_and_the_exit_code_says_so(
    v15_run, tiny_imagenet, tmp_path, capsys
):
    val = sorted((tiny_imagenet["root"] / "val").rglob("*.JPEG"))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(val[0].read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    png = tmp_path / "photo.png"
    from PIL import Image

    Image.open(val[1]).save(png)
    table = tmp_path / "top.json"
    argv = [str(val[0]), str(truncated), str(text), str(png), "--weights", str(v15_run)]
    assert predict_main([*argv, "--json", str(table)]) == 1
    err = capsys.readouterr().err
    assert f"skipped {truncated}: cannot be decoded" in err
    assert f"skipped {text}: not a JPEG, PNG or WebP image" in err
    record = json.loads(table.read_text())
    assert [r["image"] for r in record["images"]] == [str(val[0]), str(png)]
    assert {s["image"] for s in record["skipped"]} == {str(truncated), str(text)}


def one_line_error(capsys, code: int, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"{command}: error: ") and "\n" not in err, (code, err)
    return err


def test_bad_input_to_predict_and_export_is_one_line(tiny_shards, tmp_path, capsys):
    weights = tmp_path / "five_classes.pth"
    torch.save(build_resnet(50, variant="v1.5", num_classes=5).state_dict(), weights)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "readme.txt").write_text("no images here")
    cases = {
        "no such file or folder": [str(tmp_path / "missing.jpg"), "--weights", str(weights)],
        "a folder without JPEG, PNG or WebP images": [str(photos), "--weights", str(weights)],
        "matches no JPEG, PNG or WebP file": [f"{photos}/*.jpg", "--weights", str(weights)],
        "have 3 classes, the weights classify 5": [
            str(photos / "readme.txt"), "--weights", str(weights), "--classes_from",
            str(tiny_shards),
        ],
        "missing.pt: no such file": [str(photos / "readme.txt"), "--weights",
                                     str(tmp_path / "missing.pt")],
    }  # fmt: skip
    for words, argv in cases.items():
        assert words in one_line_error(capsys, predict_main(argv), "train.predict")
    preact = tmp_path / "preact.pth"
    torch.save(build_resnet(50, variant="preact", num_classes=3).state_dict(), preact)
    out = str(tmp_path / "export")
    err = one_line_error(
        capsys, export_main([str(preact), "--format", "torchvision", "--out", out]), "train.export"
    )
    assert "the preact variant" in err and "another network than torchvision's ResNet" in err
    assert not Path(out).exists()  # nothing written
    assert export_main([str(preact), "--format", "safetensors", "--out", out]) == 0  # preact: ok
    capsys.readouterr()
    config = json.loads((Path(out) / "config.json").read_text())
    assert config["variant"] == "preact" and config["architecture"].endswith("resnet50-preact")


@pytest.mark.slow
def test_init_weights_start_a_run_from_torchvisions_weights_with_another_class_count(
    tiny_shards, tmp_path, capsys
):
    import torchvision

    torch.manual_seed(3)
    source = torchvision.models.resnet50()  # 1,000 classes; the tiny shards have 3
    weights = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), weights)
    out = tmp_path / "finetune"
    flags = ["--epochs", "1", "--variant", "v1.5", "--lr", "1e-9", "--init_weights", str(weights)]
    assert run_main(tiny_shards, out, *flags) == 0
    said = capsys.readouterr().out
    assert "it has 1000 classes, the shards 3, so fc starts anew" in said
    trained = checkpoint.load(out / "last.pt")["model"]
    for name, value in source.state_dict().items():  # --lr 1e-9: the weights as they started
        if name.startswith("fc."):
            assert trained[name].shape[0] == 3
        elif "running_" not in name and "num_batches" not in name:  # BN statistics move
            assert torch.allclose(trained[name], value, atol=1e-6), name
    assert json.loads((out / "config.json").read_text())["config"]["init_weights"] == str(weights)
    refused = tmp_path / "refused"
    assert run_main(tiny_shards, refused, "--epochs", "1", "--init_weights", str(weights)) == 2
    err = capsys.readouterr().err
    assert "weights of a ResNet-50 v1.5, this run trains a ResNet-50 preact" in err
