"""train/compare.py and train/report.py on the CPU with tiny shards."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prep.eval_set import add_eval_set
from train.compare.__main__ import main as compare_main
from train.compare.stats import mcnemar_exact
from train.report import main as report_main

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--image_size", "32", "--batch", "8", "--workers", "2", "--warmup_epochs", "0"]


@pytest.fixture(scope="module")
def compared(tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    argv = ["--data_dir", str(tiny_shards), "--out", str(out), "--epochs", "2", *FLAGS]
    assert compare_main(argv) == 0
    return out


def test_both_runs_train_with_equal_settings_and_are_reported(compared):
    for name, sd in (("baseline", 0), ("sd", 1)):
        config = json.loads((compared / name / "config.json").read_text())["config"]
        assert config["sd"] == sd and config["epochs"] == 2 and config["batch"] == 8
        assert list((compared / name / "tensorboard").glob("events*"))
    base = json.loads((compared / "baseline" / "config.json").read_text())["config"]
    sd = json.loads((compared / "sd" / "config.json").read_text())["config"]
    assert {k for k in base if base[k] != sd[k]} == {"sd", "out"}
    with open(compared / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["baseline", "sd", "sd - baseline"]
    summaries = [
        json.loads((compared / n / "training_summary.json").read_text()) for n in ("baseline", "sd")
    ]
    assert float(rows[0]["best_top1"]) == pytest.approx(summaries[0]["best_top1"])
    assert float(rows[1]["final_top1"]) == pytest.approx(summaries[1]["final_top1"])
    assert float(rows[2]["best_top1"]) == pytest.approx(
        summaries[1]["best_top1"] - summaries[0]["best_top1"]
    )
    table = (compared / "comparison.md").read_text()
    assert "| baseline |" in table and "| sd - baseline |" in table
    assert "- sd / baseline: wall time " in table and "x, images/s " in table
    assert "## Is the difference real?" in table and "McNemar p = " in table
    image = Image.open(compared / "comparison.png")
    assert image.size == (1200, 460)
    # both runs drawn: the baseline's blue and the SD run's red are on the canvas
    colours = {c for _, c in image.getcolors(maxcolors=100_000)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours


def test_rerunning_compare_skips_finished_runs(compared, tiny_shards, capsys):
    before = (compared / "sd" / "last.pt").stat().st_mtime
    argv = ["--data_dir", str(tiny_shards), "--out", str(compared), "--epochs", "2", *FLAGS]
    assert compare_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("has finished its 2 epochs; skipping it") == 2
    assert (compared / "sd" / "last.pt").stat().st_mtime == before


def test_compare_refuses_an_arm_whose_folder_holds_other_flags_and_records_every_runs(
    compared, tiny_shards, capsys
):
    """comparison.json records the flags each run trained with; rerunning compare with a
    trainer flag changed names each arm and flag and trains nothing, unless --allow_changes."""
    record = json.loads((compared / "comparison.json").read_text())
    assert {name: c["sd"] for name, c in record["configs"].items()} == {"baseline": 0, "sd": 1}
    assert record["configs"]["sd"]["batch"] == 8 and record["configs"]["sd"]["epochs"] == 2
    before = (compared / "sd" / "last.pt").stat().st_mtime
    argv = ["--data_dir", str(tiny_shards), "--out", str(compared), "--epochs", "2", *FLAGS]
    assert compare_main([*argv, "--mixup", "0.2"]) == 2
    said = capsys.readouterr().out
    assert "baseline: --mixup 0.0 (now 0.2)" in said and "sd: --mixup 0.0 (now 0.2)" in said
    assert "--allow_changes" in said
    assert (compared / "sd" / "last.pt").stat().st_mtime == before


def test_report_makes_the_same_table_for_any_runs(compared, tmp_path):
    assert (
        report_main([str(compared / "baseline"), str(compared / "sd"), "--out", str(tmp_path)]) == 0
    )
    assert (tmp_path / "comparison.md").read_text() == (compared / "comparison.md").read_text()
    assert report_main([str(tmp_path / "nothing")]) == 2


def test_compare_refuses_sd_and_out_flags(capsys):
    with pytest.raises(SystemExit):
        compare_main(["--sd", "1"])
    assert "--sd is set by compare" in capsys.readouterr().err


@pytest.mark.slow
def test_each_evaluation_set_gets_its_paired_tests(
    compared, tiny_imagenet, tiny_shards, tmp_path, capsys
):
    """Finished runs evaluated on an evaluation split and with ReaL labels: the report's
    lines per set, checked against a count by hand from the logits."""
    shards, runs = tmp_path / "shards", tmp_path / "runs"
    shutil.copytree(tiny_shards, shards)
    shutil.copytree(compared, runs)  # mtimes kept: the val evaluations stay done
    source = tmp_path / "v2"
    for label, folder in enumerate(sorted((tiny_imagenet["root"] / "val").iterdir())):
        shutil.copytree(folder, source / str(label))  # ImageNetV2's index folders
    add_eval_set(shards, "imagenetv2", source, workers=1)
    real = tmp_path / "real.json"  # 9 val images: two without labels, one with two
    lists = [[0], [], [0, 1], [1], [1], [], [2], [2], [0]]
    real.write_text(json.dumps(lists))
    base = ["--data_dir", str(shards), "--out", str(runs), "--epochs", "2", *FLAGS]
    assert compare_main([*base, "--eval_splits", "nosuch"]) == 2
    assert "--eval_splits nosuch: " in capsys.readouterr().out
    assert compare_main([*base, "--eval_splits", "imagenetv2", "--real_labels", str(real)]) == 0
    assert "skipping it" in capsys.readouterr().out
    record = json.loads((runs / "comparison.json").read_text())
    assert {t["set"] for t in record["paired"]} == {"val", "val ReaL", "imagenetv2"}
    assert set(record["sets"]["sd"]) == {"val", "val ReaL", "imagenetv2"}
    table = (runs / "comparison.md").read_text()
    assert "- imagenetv2: final weights, " in table and "- val ReaL: final weights, " in table
    assert "## Beyond the val set" in table and "| imagenetv2 top-1 % |" in table
    for arm in ("baseline", "sd"):
        with np.load(runs / arm / "imagenetv2_final.npz") as saved:
            assert str(saved["split"]) == "imagenetv2" and len(saved["keys"]) == 9
        with np.load(runs / arm / "val_final.npz") as saved:
            unlabelled = [lists[int(str(k)[-8:]) - 1] == [] for k in saved["keys"]]
            assert list(saved["real_correct"] == -1) == unlabelled
    # The tiny runs predict alike; make sd's predictions differ (right on some images, wrong
    # on others), then train.report on the same folders: its tests against a count by hand.
    for file in ("val_final.npz", "imagenetv2_final.npz"):
        with np.load(runs / "sd" / file) as saved:
            arrays = dict(saved)
        labels, keys = arrays["labels"], arrays["keys"]
        predicted = np.where(np.arange(len(labels)) % 3 == 0, labels, (labels + 1) % 3)
        arrays["logits"] = np.eye(3, dtype=np.float32)[predicted]
        if "real_correct" in arrays:
            allowed = [lists[int(str(k)[-8:]) - 1] for k in keys]
            by_hand = [int(p in a) if a else -1 for p, a in zip(predicted, allowed, strict=True)]
            arrays["real_correct"] = np.array(by_hand, dtype=np.int8)
        np.savez(runs / "sd" / file, **arrays)
    report = tmp_path / "report"
    assert report_main([str(runs / "baseline"), str(runs / "sd"), "--out", str(report)]) == 0
    record = json.loads((report / "comparison.json").read_text())
    by_set = {t["set"]: t for t in record["paired"] if t["weights"] == "final"}
    for label, file, images in (("imagenetv2", "imagenetv2_final.npz", 9), ("val ReaL", None, 7)):
        right = []
        for arm in ("baseline", "sd"):
            with np.load(runs / arm / (file or "val_final.npz")) as saved:
                if file:
                    right.append(saved["logits"].argmax(1) == saved["labels"])
                else:
                    real_correct = saved["real_correct"]
                    right.append(real_correct[real_correct >= 0] == 1)
        test = by_set[label]
        assert test["images"] == images == len(right[0])
        only_a, only_b = int(np.sum(right[0] & ~right[1])), int(np.sum(right[1] & ~right[0]))
        assert only_a + only_b > 0  # the runs differ on this set
        assert test["difference"] == pytest.approx(100 * (right[1].mean() - right[0].mean()))
        assert (test["only_a"], test["only_b"]) == (only_a, only_b)
        assert test["p_value"] == pytest.approx(mcnemar_exact(only_a, only_b))
        assert record["sets"]["sd"][label]["top1"] == pytest.approx(100 * right[1].mean())
    assert (
        f"- imagenetv2: final weights, sd - baseline: {by_set['imagenetv2']['difference']:+.2f}"
        in (report / "comparison.md").read_text()
    )


@pytest.mark.slow
def test_parallel_mode_prefixes_each_line_with_the_run_name(tiny_shards, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "train.compare",
        "--data_dir",
        str(tiny_shards),
        "--out",
        str(tmp_path / "par"),
        "--epochs",
        "1",
        "--mode",
        "parallel",
        *FLAGS,
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("[baseline] epoch 1/1:") for line in lines)
    assert any(line.startswith("[sd] epoch 1/1:") for line in lines)
    assert (tmp_path / "par" / "comparison.png").is_file()


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_reaches_its_target(tmp_path):
    cmd = [sys.executable, "-m", "train.demo", "--out", str(tmp_path / "demo")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "reached the demo's target of 90%" in summary
    for name in ("baseline", "sd"):
        final = json.loads((tmp_path / "demo/compare" / name / "training_summary.json").read_text())
        assert final["final_top1"] >= 0.9 and final["epochs_completed"] == 10
