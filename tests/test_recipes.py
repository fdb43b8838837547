"""Time to accuracy: LR schedules, progressive resizing (FFCV's rule), the EMA of the weights,
flip TTA, named recipes and the dry run's plan."""

from __future__ import annotations

import functools
import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from models import build_resnet, survival_probs
from models.__main__ import main as models_main
from models.flops import skipped_share, training_flops
from tests.test_train import FAST, history, scalars
from train import checkpoint
from train.config import ConfigError, check, derive, parse_config, step_milestones
from train.data import make_loader
from train.ema import build_average, step_decay, update_average
from train.loop import evaluate
from train.main import main
from train.plan import run_plan
from train.recipes import RECIPES
from train.schedule import lr_at, resolution_at
from train.shards import open_shards


def test_the_linear_schedule_warms_up_then_falls_in_a_straight_line_to_zero():
    def lr(step):
        return lr_at(step, base_lr=0.8, warmup_steps=10, total_steps=110, schedule="linear")

    assert [lr(0), lr(5), lr(10)] == [0.0, pytest.approx(0.4), pytest.approx(0.8)]
    assert lr(109) == 0.0  # the last step
    decay = [lr(s) for s in range(10, 110)]
    steps = np.diff(decay)
    assert np.allclose(steps, steps[0]) and steps[0] < 0  # one slope: a straight line
    assert lr(59.5) == pytest.approx(0.4)  # halfway down at the middle of the decay


def test_the_step_schedule_divides_by_ten_at_its_milestones():
    assert step_milestones(90, 0) == (30, 60)  # torchvision's reference: 30 and 60 of 90
    assert step_milestones(95, 5) == (35, 65)  # after a warmup: thirds of the rest

    def lr(step):
        return lr_at(
            step, base_lr=0.1, warmup_steps=5, total_steps=100, schedule="step", milestones=(40, 70)
        )

    assert [lr(0), lr(5), lr(39)] == [0.0, 0.1, 0.1]
    assert [lr(40), lr(69), lr(70), lr(99)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    cfg = parse_config(["--lr_schedule", "step", "--epochs", "12", "--warmup_epochs", "0"])
    assert derive(cfg, 0, 1, 0).lr_milestones == (4, 8)
    given = parse_config(["--lr_schedule", "step", "--epochs", "12", "--lr_milestones", "3,9.5"])
    assert derive(given, 0, 1, 0).lr_milestones == (3.0, 9.5)


def ffcv_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """FFCV's get_resolution as its train_imagenet.py writes it, with NumPy."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.parametrize(
    "epochs,low,high,start,end",
    [(40, 160, 192, 29, 34), (88, 160, 192, 65, 76), (16, 160, 192, 11, 13), (30, 96, 256, 3, 25)],
)
def test_progressive_resizing_follows_ffcvs_rule(epochs, low, high, start, end):
    ours = [resolution_at(e, low, high, start, end) for e in range(epochs)]
    assert ours == [ffcv_resolution(e, low, high, end, start) for e in range(epochs)]
    assert ours[0] == low and ours[-1] == high and ours == sorted(ours)


def test_the_fast_recipe_and_explicit_flags_over_it():
    fast = parse_config(["--recipe", "fast"])
    assert (fast.recipe, fast.epochs, fast.min_res, fast.max_res, fast.val_res) == (
        "fast", 40, 160, 192, 256
    )  # fmt: skip
    assert (fast.lr_schedule, fast.warmup_epochs, fast.label_smoothing, fast.tta) == (
        "linear", 2.0, 0.1, True
    )  # fmt: skip
    assert fast.ema is False  # not measured to help on the CPU proxy: see docs/benchmarks.md
    d = derive(fast, 0, 1, 0)
    assert (d.start_ramp, d.end_ramp, d.val_res) == (29, 34, 256)  # FFCV's 40-epoch ramp
    mine = parse_config(["--recipe", "fast", "--epochs", "16", "--no_tta", "--val_res", "224"])
    assert (mine.epochs, mine.tta, mine.val_res, mine.min_res) == (16, False, 224, 160)
    assert (derive(mine, 0, 1, 0).start_ramp, derive(mine, 0, 1, 0).end_ramp) == (12, 14)
    seed = parse_config([])
    assert seed.recipe == "seed" and seed == parse_config(["--recipe", "seed"])
    assert (seed.epochs, seed.min_res, seed.lr_schedule, seed.tta) == (120, None, "cosine", False)
    assert set(RECIPES) == {"seed", "fast", "accurate", "mlperf"}
    assert fast.blurpool  # as FFCV's figures were reached
    assert all(r.source and r.literature for r in RECIPES.values())


def test_impossible_recipe_flags_are_refused_all_at_once():
    flags = ["--min_res", "224", "--max_res", "160", "--start_ramp", "9", "--end_ramp", "3"]
    flags += ["--epochs", "10", "--ema", "--ema_halflife", "0", "--lr_milestones", "5"]
    with pytest.raises(ConfigError) as e:
        check(parse_config(flags), world_size=1)
    message = str(e.value)
    for expected in (
        "--min_res 224 is above --max_res 160",
        "0 <= start_ramp <= end_ramp <= --epochs 10",
        "--ema_halflife 0.0 must be > 0",
        "--lr_milestones is for --lr_schedule step",
    ):
        assert expected in message
    for flags, expected in (
        (["--min_res", "100"], "--min_res 100 must be a multiple of 32"),
        (["--max_res", "256"], "--max_res belong to progressive resizing, which --min_res"),
        (["--min_res", "128", "--end_ramp", "50", "--epochs", "40"], "end_ramp <= --epochs 40"),
        (["--lr_schedule", "step", "--lr_milestones", "9,3"], "epochs must increase"),
        (["--lr_schedule", "step", "--lr_milestones", "x"], "give epochs separated by commas"),
        (["--val_res", "16"], "--val_res 16 must be at least 32"),
    ):
        with pytest.raises(ConfigError, match=expected.replace("-", r"\-")):
            check(parse_config(flags), world_size=1)
    for flags in (["--recipe", "slow"], ["--lr_schedule", "exponential"]):
        with pytest.raises(SystemExit):  # argparse: invalid choice, with the valid ones
            parse_config(flags)


def test_the_ema_update_is_the_hand_computed_average():
    live = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    live(torch.randn(2, 3, 8, 8))  # BN statistics and its step counter move
    average = build_average(live, decay=0.9)
    before = {k: v.clone() for k, v in average.model.state_dict().items()}
    with torch.no_grad():
        for t in live.parameters():
            t.add_(torch.randn_like(t))
    live(torch.randn(2, 3, 8, 8))
    update_average(average)
    now = live.state_dict()
    for key, value in average.model.state_dict().items():
        if value.is_floating_point():  # parameters and running statistics: averaged
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * now[key])
        else:  # num_batches_tracked: copied
            assert torch.equal(value, now[key]) and not torch.equal(value, before[key])
    assert not any(p.requires_grad for p in average.model.parameters())


def test_the_ema_half_life_is_the_same_number_of_images_at_any_batch_size():
    images = 1_281_167
    for batch in (256, 1024):
        steps = images // batch
        decay = step_decay(2.0, steps)
        assert decay ** (2 * steps) == pytest.approx(0.5)  # half after 2 epochs of steps
    # doubling the batch halves the steps: one step must decay as two did
    assert step_decay(1.0, 500) == pytest.approx(step_decay(1.0, 1000) ** 2)


def test_tta_logits_are_the_mean_of_the_two_views(tiny_shards):
    torch.manual_seed(0)
    model = build_resnet(50, num_classes=3).eval()
    d = derive(parse_config(["--device", "cpu"]), 0, 1, 0)

    def loader():
        return make_loader(
            open_shards(tiny_shards), "val", batch_size=4, image_size=32, num_threads=2
        )

    seen = []
    result = evaluate(model, loader(), d, record=lambda x, y: seen.append(x), tta=True)
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert result["val_samples"] == manifest["splits"]["val"]["num_samples"]  # each image once
    with torch.no_grad():
        expected = [(model(x) + model(torch.flip(x, dims=[3]))) / 2 for x, _ in loader()]
        plain = [model(x) for x, _ in loader()]
    torch.testing.assert_close(torch.cat(seen), torch.cat(expected))
    assert not torch.allclose(torch.cat(seen), torch.cat(plain))  # the mirror view counted


@pytest.mark.parametrize("sd", [0, 1])
def test_the_dry_run_counts_the_flops_of_every_epoch_at_its_resolution(sd):
    cfg = parse_config(["--recipe", "fast", "--epochs", "10", "--sd", str(sd), "--batch", "64"])
    plan = run_plan(cfg, 1, images=6400, classes=10)
    assert plan["resolutions"] == [160] * 8 + [192] * 2
    expected = 0.0
    for size in plan["resolutions"]:
        total, branches = training_flops(50, "preact", size, 10, blurpool=True)  # fast's
        if sd:
            total *= 1 - skipped_share(survival_probs(16, 0.5), total, branches)
        expected += 6400 * total
    assert plan["training_flops"] == pytest.approx(expected, rel=1e-12)
    assert plan["steps_per_epoch"] == 100 and plan["lr"][0] == 0.0


def test_the_dry_run_prints_the_plan_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["--dry_run", "--recipe", "fast", "--data_dir", str(tmp_path), "--out", str(out)])
    said = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "160 px in epochs 1-32, 192 px in epochs 33-40" in said
    assert "ImageNet's count" in said and "0.19x the seed recipe's" in said
    assert main(["--dry_run", "--min_res", "100"]) == 2  # flags are still checked
    models_main(["--image_size", "160"])
    assert "GFLOPs at 160x160: 4.17" in capsys.readouterr().out


class StopAt:
    """Wraps train.inputs.TrainData.epoch: records the image size of every train micro-batch
    per epoch, and sends this process SIGTERM as micro-batch `batch` of epoch `epoch` is
    handed over."""

    def __init__(self, epoch=None, batch=None):
        import train.inputs

        self.original = train.inputs.TrainData.epoch
        while isinstance(self.original, StopAt):  # another test's, still patched in
            self.original = self.original.original
        self.epoch, self.batch, self.sizes, self.counts = epoch, batch, {}, {}

    def __get__(self, data, owner=None):  # a method of TrainData, as the one it wraps
        return self if data is None else functools.partial(self.__call__, data)

    def __call__(self, data, epoch: int, start_step: int = 0):
        for i, (images, labels, micro) in enumerate(self.original(data, epoch, start_step)):
            self.sizes.setdefault(epoch, set()).add(tuple(images.shape[2:]))
            self.counts[epoch] = i + 1
            if (epoch, i) == (self.epoch, self.batch):
                os.kill(os.getpid(), signal.SIGTERM)
            yield images, labels, micro


@pytest.mark.slow
def test_a_stop_at_an_epochs_last_step_resumes_with_its_evaluation_and_the_next_epoch(
    tiny_shards, tmp_path, monkeypatch
):
    """SIGTERM as the last micro-batch of epoch 1 is handed over: the save after that step
    holds every step of it, and the feed at epoch 2's start; the rerun trains nothing of
    epoch 1, evaluates it, and ends as the uninterrupted run, bit for bit."""
    import train.inputs

    flags = [*FAST, "--data_dir", str(tiny_shards), "--epochs", "2", "--log_every", "1"]
    whole = StopAt()
    monkeypatch.setattr(train.inputs.TrainData, "epoch", whole)
    reference = tmp_path / "reference"
    assert main([*flags, "--out", str(reference)]) == 0
    stopped = StopAt(epoch=0, batch=whole.counts[0] - 1)  # the epoch's last micro-batch
    monkeypatch.setattr(train.inputs.TrainData, "epoch", stopped)
    out = tmp_path / "stopped"
    assert main([*flags, "--out", str(out)]) == 128 + signal.SIGTERM
    saved = checkpoint.load(out / "last.pt")
    steps = json.loads((out / "config.json").read_text())["derived"]["steps_per_epoch"]
    assert (saved["epoch"], saved["steps_done"]) == (0, steps) and saved["feed"]["epoch"] == 1
    resumed = StopAt()
    monkeypatch.setattr(train.inputs.TrainData, "epoch", resumed)
    assert main([*flags, "--out", str(out)]) == 0
    assert resumed.counts == {1: whole.counts[1]}  # nothing of epoch 1 again
    timing = ("epoch_seconds", "images_per_second", "run_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in history(out)] == [
        {k: v for k, v in r.items() if k not in timing} for r in history(reference)
    ]
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(reference / "last.pt")
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_progressive_resizing_and_ema_resume_mid_epoch_exactly(tiny_shards, tmp_path, monkeypatch):
    """Epoch 1 at 32 px, epochs 2-3 at 64 px as DALI delivers them; a SIGTERM in epoch 2
    resumes at 64 px and ends with the uninterrupted run's weights, EMA and history."""
    import train.inputs

    flags = [*FAST, "--data_dir", str(tiny_shards), "--epochs", "3", "--log_every", "1"]
    flags += ["--min_res", "32", "--max_res", "64", "--start_ramp", "0", "--end_ramp", "1"]
    flags += ["--ema", "--ema_halflife", "0.5", "--tta", "--lr_schedule", "linear"]
    whole = StopAt()
    monkeypatch.setattr(train.inputs.TrainData, "epoch", whole)
    reference = tmp_path / "reference"
    assert main([*flags, "--out", str(reference)]) == 0
    assert whole.sizes == {0: {(32, 32)}, 1: {(64, 64)}, 2: {(64, 64)}}
    rows = history(reference)
    assert [r["train_res"] for r in rows] == ["32", "64", "64"]
    assert scalars(reference, "epoch/train_res") == {1: 32, 2: 64, 3: 64}
    assert all(r["val_top1_ema"] != "" for r in rows)
    recorded = json.loads((reference / "config.json").read_text())
    config, derived = recorded["config"], recorded["derived"]
    assert (config["recipe"], config["min_res"], config["ema"]) == ("seed", 32, True)
    assert derived["train_resolution"] == {
        "min_res": 32, "max_res": 64, "start_ramp": 0, "end_ramp": 1
    }  # fmt: skip
    assert derived["ema_decay_per_step"] == pytest.approx(0.5 ** (1 / (0.5 * (21 // 8))))
    stopped = StopAt(epoch=1, batch=0)
    monkeypatch.setattr(train.inputs.TrainData, "epoch", stopped)
    out = tmp_path / "stopped"
    assert main([*flags, "--out", str(out)]) == 128 + signal.SIGTERM
    saved = checkpoint.load(out / "last.pt")
    assert (saved["epoch"], saved["steps_done"]) == (1, 1) and saved["ema"] is not None
    resumed = StopAt()
    monkeypatch.setattr(train.inputs.TrainData, "epoch", resumed)
    assert main([*flags, "--out", str(out)]) == 0
    assert resumed.sizes == {1: {(64, 64)}, 2: {(64, 64)}}  # the epoch it stopped in: 64 px
    timing = ("epoch_seconds", "images_per_second", "run_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in history(out)] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows
    ]
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(reference / "last.pt")
    for part in ("model", "ema"):
        for k in b[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    best = checkpoint.load(reference / "best.pt")
    assert best["best_weights"] in ("live", "ema")
    assert best["best_top1"] == max(
        max(float(r["val_top1"]), float(r["val_top1_ema"])) for r in rows
    )
    assert not math.isnan(best["best_top1"])
