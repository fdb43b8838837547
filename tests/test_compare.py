"""train/compare.py and train/report.py on the CPU with tiny shards."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from train.compare import main as compare_main
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
