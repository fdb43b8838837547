"""train.bench on the CPU with the tiny shards: each benchmark runs, prints its table and
writes its JSON whole, with the code version and the machine facts that config.json has."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from prep.flags import BENCH_RUNS
from prep.provenance import machine_facts
from train.bench.__main__ import main as bench_main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_times_each_mode_and_optimizer_and_records_where_it_ran(
    tiny_shards, tmp_path, capsys
):
    out = tmp_path / "train.json"
    bench_main(
        ["train", "--data-dir", str(tiny_shards), "--device", "cpu", "--depth", "50",
         "--batch", "2", "--image_size", "32", "--warmup", "1", "--batches", "2",
         "--workers", "1", "--sd_modes", "off,batch", "--optimizer", "lars", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "32 px: SD batch / SD off (synthetic)" in printed
    assert "32 px, SD off: LARS step / fused SGD step (synthetic)" in printed
    result = json.loads(out.read_text())
    assert [(r["sd"], r["optimizer"]) for r in result["rows"]] == [
        ("off", "sgd"), ("off", "lars"), ("batch", "sgd"), ("batch", "lars")
    ]  # fmt: skip
    assert all(
        r["dali"]["images_per_s"] > 0 and r["synthetic"]["step_ms"] > 0 for r in result["rows"]
    )
    assert result["code_version"] not in ("", None)
    assert set(machine_facts()) <= set(result["machine"])
    assert not list(tmp_path.glob(".*.tmp.*"))


def test_bench_checkpoint_saves_as_the_trainer_does_into_an_ignored_folder(
    tmp_path, capsys, monkeypatch
):
    """Without --json the JSON goes under benchmarks/runs/, which git ignores: a benchmark
    run leaves the tree as it was (benchmarks/results/ keeps the runs the docs cite)."""
    monkeypatch.chdir(tmp_path)
    assert bench_main(["checkpoint", "--device", "cpu", "--rounds", "1", "--out", "."]) == 0
    assert "save as the trainer does" in capsys.readouterr().out
    out = tmp_path / BENCH_RUNS / "checkpoint-rn50-cpu.json"
    result = json.loads(out.read_text())
    assert result["bytes"] > 100e6 and len(result["save_seconds"]) == 1  # ResNet-50's last.pt
    assert result["code_version"] and result["machine"]["device"] == "cpu"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"{BENCH_RUNS}/checkpoint-rn50-cpu.json"], cwd=ROOT
    )
    assert ignored.returncode == 0, f"{BENCH_RUNS} is not ignored by git"


def test_bench_times_blurpool_the_ema_and_the_automatic_augmentation(tiny_shards, tmp_path, capsys):
    out = tmp_path / "blur.json"
    bench_main(
        ["train", "--data_dir", str(tiny_shards), "--device", "cpu", "--batch", "2",
         "--image_size", "32", "--warmup", "1", "--batches", "1", "--workers", "1", "--sd", "0",
         "--blurpool", "--ema", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "32 px, SD off: BlurPool step / plain step (synthetic)" in printed
    assert "at --ema_every 1" in printed and "at --ema_every 32" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["blurpool"] for r in rows] == [False, True]
    assert all(r["synthetic"]["ema_update_ms"] > 0 for r in rows)
    out = tmp_path / "input.json"
    bench_main(
        ["input", "--data_dir", str(tiny_shards), "--device", "cpu", "--batch", "4",
         "--image_size", "32", "--warmup", "1", "--batches", "2", "--workers", "1",
         "--auto_augment", "ta_wide", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "DataLoader, torchvision's ta_wide" in printed and "us of CPU per image" in printed
    result = json.loads(out.read_text())
    assert set(result["results"]) == {
        "feed", "webdataset", "dataloader", "feed_auto", "dataloader_auto"
    }  # fmt: skip
    assert all(row["images_timed"] == 2 * 4 for row in result["results"].values())
    assert result["ratio"] == result["ratios"]["feed/webdataset"] > 0
    assert result["ratios"]["feed_auto/dataloader_auto"] > 0
    assert result["feed_cpu_us_per_image"] > 0
