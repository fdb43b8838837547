"""The large-batch recipe: LARS against a plain per-tensor loop of MLPerf's definition, the
polynomial schedule, --eval_offset, --recipe mlperf's values and refusals, and --target_top1
in tiny runs (stopping at the epoch that reaches it, null when none does, the time to it
kept across a resume)."""

from __future__ import annotations

import copy
import json
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from tests.test_optimizer import batches, trainer
from train.config import ConfigError, check, parse_config
from train.loop import set_lr, train_step
from train.schedule import evaluation_due, lr_at

ETA, WEIGHT_DECAY, MOMENTUM = 0.001, 5e-5, 0.9


def mlperf_lars(model: torch.nn.Module, lrs: list[float], data: list) -> torch.nn.Module:
    """MLPerf's reference LARS (lars_optimizer.py) written out tensor by tensor: BN weights
    and biases (rank 1) skip the trust ratio and the weight decay; a zero weight or gradient
    norm gives trust 1; the LR goes into the buffer before the momentum."""
    buffers = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for lr, (images, labels) in zip(lrs, data, strict=True):
        model.zero_grad()
        F.cross_entropy(model(images), labels, label_smoothing=0.1).backward()
        with torch.no_grad():
            for name, w in model.named_parameters():
                g = w.grad
                if w.ndim < 2:
                    scaled_lr, step = lr, g
                else:
                    w_norm, g_norm = float(w.norm()), float(g.norm())
                    trust = 1.0
                    if w_norm > 0 and g_norm > 0:
                        trust = ETA * w_norm / (g_norm + WEIGHT_DECAY * w_norm)
                    scaled_lr, step = lr * trust, g + WEIGHT_DECAY * w
                buffers[name] = MOMENTUM * buffers[name] + scaled_lr * step
                w -= buffers[name]
    return model


def test_lars_matches_mlperfs_definition_step_by_step_with_a_changing_lr():
    run = trainer("--optimizer", "lars", "--lr", "0.1", "--weight_decay", str(WEIGHT_DECAY))
    assert type(run.optimizer).__name__ == "Lars"
    zero = [n for n, p in run.model.named_parameters() if p.ndim >= 2 and not p.any()]
    assert zero, "the preact blocks' zero-initialised conv3: the trust-ratio fallback"
    reference = copy.deepcopy(run.model)
    lrs, data = [0.02, 0.1, 0.06, 0.01], batches(4, seed=1)  # a changing LR
    run.model.train(), reference.train()
    for lr, (images, labels) in zip(lrs, data, strict=True):
        set_lr(run.optimizer, lr)
        train_step(run, images, labels, boundary=True)
    mlperf_lars(reference, lrs, data)
    moved = 0
    for (name, p), q in zip(run.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        moved += name in zero and bool(p.any())
    assert moved == len(zero)  # the zero weights trained (trust 1), as MLPerf's fall back


def nvidia_lars(model: torch.nn.Module, lrs: list[float], data: list) -> torch.nn.Module:
    """NVIDIA's MLPerf LARS (sgdwfastlars of its MXNet ResNet-50: common/fit.py and the
    lars_multi_mp_sgd_mom_update kernel) written out tensor by tensor, in its own sign
    convention: the conv and linear weights get the trust ratio, the weight decay and the
    momentum corrected by lr_t / lr_{t-1} (m at the first step); BN weights and biases,
    updated in later chunks, plain momentum m, no trust ratio, no weight decay.
    (NVIDIA's code also decays the classifier's bias: this model is fed no such tensor's
    weight decay, as ours exempts every bias.)"""
    moms = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    last_lr = None
    for lr, (images, labels) in zip(lrs, data, strict=True):
        model.zero_grad()
        F.cross_entropy(model(images), labels, label_smoothing=0.1).backward()
        corrected = MOMENTUM * (lr / last_lr if last_lr else 1.0)
        with torch.no_grad():
            for name, w in model.named_parameters():
                g = w.grad
                if w.ndim >= 2:
                    w_norm, g_norm = float(w.norm()), float(g.norm())
                    is_lars_valid = w_norm > 0 and g_norm > 0
                    rate = lr * ETA * w_norm / (g_norm + WEIGHT_DECAY * w_norm) if (
                        is_lars_valid
                    ) else lr  # fmt: skip
                    moms[name] = corrected * moms[name] - rate * WEIGHT_DECAY * w - rate * g
                else:
                    moms[name] = MOMENTUM * moms[name] - lr * g
                w += moms[name]
        last_lr = lr
    return model


def test_lars_with_momentum_correction_matches_nvidias_update_step_by_step():
    flags = ["--optimizer", "lars", "--lr", "0.1", "--weight_decay", str(WEIGHT_DECAY)]
    run = trainer(*flags, "--lars_momentum_correction")
    reference = copy.deepcopy(run.model)
    # LR ratios above and below 1, near it: a momentum of 0.9 x 5 amplifies float rounding
    # past any tolerance within a step or two, in both implementations alike
    lrs, data = [0.02, 0.03, 0.024, 0.02, 0.022], batches(5, seed=2)
    run.model.train(), reference.train()
    for lr, (images, labels) in zip(lrs, data, strict=True):
        set_lr(run.optimizer, lr)
        train_step(run, images, labels, boundary=True)
    nvidia_lars(reference, lrs, data)
    for (name, p), q in zip(run.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    plain = trainer(*flags)  # the mlcommons reference's order: another result
    for lr, (images, labels) in zip(lrs, data, strict=True):
        set_lr(plain.optimizer, lr)
        train_step(plain, images, labels, boundary=True)
    assert not torch.allclose(plain.model.fc.weight, run.model.fc.weight, rtol=1e-4)


def test_the_mlperf_initialisation_is_nvidias():
    """--init mlperf (MLPerfInit): He normal on fan_in, every BN weight 1 (no block starts
    at 0), the classifier N(0, 0.01) with bias 0; the default zeroes each block's last BN."""
    from models import build_resnet

    torch.manual_seed(0)
    model = build_resnet(50, variant="v1.5", init="mlperf")
    assert all(
        bool((m.weight == 1).all()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert float(model.fc.weight.detach().std()) == pytest.approx(0.01, rel=0.02)
    assert not model.fc.bias.any()
    conv = model.layer3[0].conv2  # 256 x 256 x 3 x 3: fan_in 2304
    assert float(conv.weight.detach().std()) == pytest.approx((2 / 2304) ** 0.5, rel=0.02)
    default = build_resnet(50, variant="v1.5")
    assert not default.layer1[0].bn3.weight.any()  # zero-init residual
    assert float(default.layer3[0].conv2.weight.detach().std()) == pytest.approx(
        (2 / 2304) ** 0.5, rel=0.02
    )
    assert float(default.layer3[0].conv1.weight.detach().std()) == pytest.approx(
        (2 / 256) ** 0.5, rel=0.02
    )
    assert float(model.layer3[0].conv1.weight.detach().std()) == pytest.approx(
        (2 / 512) ** 0.5, rel=0.02
    )


def test_lars_leaves_a_dropped_blocks_parameters_alone():
    run = trainer("--optimizer", "lars", "--lr", "1.0", "--sd", "1", "--pL", "0.2", "--seed", "4")
    before = [p.clone() for p in run.model.parameters()]
    images, labels = batches(1)[0]
    train_step(run, images, labels, boundary=True)
    params = list(run.model.parameters())
    still = [p for p, b in zip(params, before, strict=True) if torch.equal(p, b)]
    assert still and len(still) < len(params)  # the dropped blocks' branches did not move
    assert all(not run.optimizer.state[p]["momentum_buffer"].any() for p in still)


def test_the_poly_schedule_at_warmup_end_midway_and_the_last_step():
    kwargs = {"base_lr": 11.0, "warmup_steps": 10, "total_steps": 110, "schedule": "poly"}
    kwargs |= {"end_lr": 1e-4, "power": 2.0}
    assert lr_at(5, **kwargs) == pytest.approx(5.5)  # the linear warmup
    assert lr_at(10, **kwargs) == pytest.approx(11.0)
    assert lr_at(60, **kwargs) == pytest.approx(1e-4 + (11.0 - 1e-4) * 0.25)
    assert lr_at(109, **kwargs) == pytest.approx(1e-4 + (11.0 - 1e-4) * 0.01**2)
    assert lr_at(110, **kwargs) == pytest.approx(1e-4)


def test_eval_offset_evaluates_after_epochs_3_7_11_and_the_last():
    cfg = parse_config(["--epochs", "37", "--eval_every", "4", "--eval_offset", "3"])
    due = [e + 1 for e in range(37) if evaluation_due(cfg, e)]
    assert due == [3, 7, 11, 15, 19, 23, 27, 31, 35, 37]
    plain = parse_config(["--epochs", "10", "--eval_every", "4"])
    assert [e + 1 for e in range(10) if evaluation_due(plain, e)] == [4, 8, 10]
    short = parse_config(["--recipe", "mlperf", "--epochs", "2"])  # a smoke test of it
    check(short, world_size=1)
    assert [e + 1 for e in range(2) if evaluation_due(short, e)] == [2]  # the last, always


def test_recipe_mlperf_holds_nvidias_h200_values():
    cfg = parse_config(["--recipe", "mlperf"])
    assert (cfg.optimizer, cfg.batch, cfg.lr, cfg.lr_schedule) == ("lars", 3200, 11.0, "poly")
    assert (cfg.lr_end, cfg.lr_poly_power, cfg.warmup_epochs, cfg.epochs) == (1e-4, 2.0, 2.0, 37)
    assert (cfg.weight_decay, cfg.label_smoothing, cfg.variant) == (5e-5, 0.1, "v1.5")
    assert (cfg.eval_every, cfg.eval_offset, cfg.target_top1) == (4, 3, 75.9)
    assert cfg.lars_momentum_correction and cfg.init == "mlperf"  # NVIDIA's, not the reference's
    assert cfg.dali.crop_area_min == 0.05 and not cfg.dali.color_jitter  # --min-random-area
    check(cfg, world_size=8)  # 400 images per rank, as NVIDIA's
    check(parse_config(["--recipe", "mlperf", "--accum", "4"]), world_size=8)


def test_bad_large_batch_flags_are_refused_together():
    cfg = parse_config(
        ["--optimizer", "lars", "--target_top1", "120", "--lr_schedule", "poly",
         "--lr_poly_power", "0", "--lars_eta", "-1", "--nesterov"]
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        check(cfg, world_size=1)
    text = str(error.value)
    for flag in ("--target_top1 120", "--lr_poly_power 0", "--lars_eta -1", "--lr", "--nesterov"):
        assert flag in text, (flag, text)
    with pytest.raises(ConfigError, match="--lr_end is for --lr_schedule poly"):
        check(parse_config(["--lr_end", "0.001"]), world_size=1)
    with pytest.raises(ConfigError, match="batch 3,200"):
        check(parse_config(["--recipe", "mlperf", "--batch", "1024"]), world_size=8)
    check(parse_config(["--recipe", "mlperf", "--batch", "1024", "--lr", "4"]), world_size=8)
    check(parse_config(["--recipe", "mlperf", "--accum", "3"]), world_size=8)  # 134, 133, 133


def summary_of(out) -> dict:
    return json.loads((out / "training_summary.json").read_text())


@pytest.mark.slow
def test_a_reached_target_stops_the_run_and_a_missed_one_is_null(tiny_shards, tmp_path, capsys):
    from tests.test_train import history, run_main

    reached = tmp_path / "reached"
    assert run_main(tiny_shards, reached, "--epochs", "3", "--target_top1", "1e-6") == 0
    summary = summary_of(reached)
    assert len(history(reached)) == summary["epochs_completed"] == 1  # epoch 1 reached it
    assert (summary["target_top1"], summary["target_epoch"]) == (1e-6, 1)
    row = history(reached)[0]
    assert summary["time_to_target_s"] == pytest.approx(float(row["run_seconds"]), abs=0.05)
    assert 0 < summary["time_to_target_s"] <= summary["total_seconds"]
    assert "target top-1 1e-06% reached at epoch 1" in capsys.readouterr().out
    # rerun: the target was reached, so nothing more is trained
    assert run_main(tiny_shards, reached, "--epochs", "3", "--target_top1", "1e-6") == 0
    assert summary_of(reached)["epochs_completed"] == 1
    missed = tmp_path / "missed"
    assert run_main(tiny_shards, missed, "--epochs", "2", "--target_top1", "100") == 0
    summary = summary_of(missed)
    assert summary["epochs_completed"] == 2
    assert summary["target_epoch"] is None and summary["time_to_target_s"] is None
    assert "target top-1 100% not reached in 2 epochs" in capsys.readouterr().out


@pytest.mark.slow
def test_the_time_to_target_of_a_resumed_run_is_the_time_it_spent(
    tiny_shards, tmp_path, monkeypatch
):
    import train.inputs
    from tests.test_recipes import StopAt
    from tests.test_train import FAST
    from train.main import main

    out = tmp_path / "run"
    flags = ["--data_dir", str(tiny_shards), "--out", str(out), *FAST, "--epochs", "2"]
    flags += ["--eval_every", "2", "--target_top1", "1e-6", "--log_every", "1"]
    whole = train.inputs.TrainData.epoch
    monkeypatch.setattr(train.inputs.TrainData, "epoch", StopAt(epoch=1, batch=0))
    start = time.time()
    assert main(flags) == 128 + signal.SIGTERM  # stopped in epoch 2, before its evaluation
    time.sleep(5)  # between the runs: not the run's time
    monkeypatch.setattr(train.inputs.TrainData, "epoch", whole)
    assert main(flags) == 0
    wall = time.time() - start
    summary = summary_of(out)
    assert summary["target_epoch"] == 2
    assert 0 < summary["time_to_target_s"] < wall - 5
    assert summary["total_seconds"] < wall - 5


@pytest.mark.slow
def test_compare_and_report_show_each_runs_time_to_target(tiny_shards, tmp_path, capsys):
    import csv

    from tests.test_compare import FLAGS
    from train.compare.__main__ import main as compare_main
    from train.report import main as report_main

    out = tmp_path / "compare"
    argv = ["--data_dir", str(tiny_shards), "--out", str(out), "--epochs", "3", *FLAGS]
    argv += ["--target_top1", "1e-6"]
    assert compare_main(argv) == 0
    table = (out / "comparison.md").read_text()
    assert "| target epoch | time to 1e-06% |" in table
    with open(out / "comparison.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    for name in ("baseline", "sd"):
        summary = summary_of(out / name)
        assert rows[name]["target_epoch"] == "1" and summary["epochs_completed"] == 1
        assert float(rows[name]["time_to_target_s"]) == summary["time_to_target_s"] > 0
    assert compare_main(argv) == 0  # the target was reached: nothing is trained again
    assert capsys.readouterr().out.count("skipping it") == 2
    assert report_main([str(out / "baseline"), str(out / "sd"), "--out", str(tmp_path)]) == 0
    assert "| target epoch | time to 1e-06% |" in (tmp_path / "comparison.md").read_text()


def test_a_checkpoint_of_the_mlperf_recipe_evaluates_at_any_batch():
    from train.config import to_dict
    from train.evaluate import Weights, eval_config, parse_args

    trained = to_dict(parse_config(["--recipe", "mlperf"]))
    weights = Weights({}, 50, "v1.5", 1000, "checkpoint", trained)
    cfg = eval_config(parse_args(["--weights", "w.pt", "--batch", "64"]), weights)
    check(cfg, world_size=2)  # no LARS LR tuned for batch 3,200 stands in the way
    assert (cfg.val_res, cfg.label_smoothing, cfg.variant) == (None, 0.1, "v1.5")


def test_the_dry_run_of_the_mlperf_recipe_on_8_ranks_and_on_one(monkeypatch, capsys):
    from train.main import main

    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["--recipe", "mlperf", "--dry_run", "--data_dir", "no-shards-here"]) == 0
    said = capsys.readouterr().out
    assert "batch 3200 over 8 process(es): 400 images per rank per step, in micro-batches " in said
    assert "of at most 400;" in said
    assert "after epochs 3, 7, 11, ..., 35, 37; stops at the first at 75.9% top-1" in said
    assert "LARS (eta 0.001, eps 0), momentum 0.9, weight decay 5e-05" in said
    assert "learning rate (poly, warmup 2 epochs): 0 at step 0" in said and "11 at step" in said
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["--recipe", "mlperf", "--dry_run", "--accum", "8"]) == 0
    assert "3200 images per rank per step, in micro-batches of at most 400" in (
        capsys.readouterr().out
    )
    assert main(["--recipe", "mlperf", "--dry_run", "--micro_batch", "256"]) == 0
    assert "micro-batches of at most 256" in capsys.readouterr().out
