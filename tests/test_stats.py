"""train.compare.stats, the comparison tool's statistics, against known cases and hand computations,
and train.compare's arms and seeds end to end on the digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from train.compare.__main__ import main as compare_main
from train.compare.arms import parse_arm
from train.compare.stats import (
    Seeds,
    bootstrap_interval,
    larger_noise,
    mcnemar_exact,
    paired,
    sampling_error,
    welch,
)


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    # by hand: two-sided, P(X >= 12) doubled for X ~ Binomial(15, 1/2)
    by_hand = 2 * sum(math.comb(15, k) for k in range(12, 16)) / 2**15
    assert mcnemar_exact(3, 12) == pytest.approx(by_hand)
    assert mcnemar_exact(12, 3) == pytest.approx(by_hand)  # symmetric
    assert mcnemar_exact(3, 12) == pytest.approx(scipy_stats.binomtest(12, 15, 0.5).pvalue)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0


def test_identical_predictions_have_a_zero_interval():
    correct = np.random.default_rng(0).random(5000) < 0.7
    assert bootstrap_interval(correct, correct.copy()) == (0.0, 0.0)
    result = paired(correct, correct.copy())
    assert (result.difference, result.only_a, result.only_b, result.p_value) == (0.0, 0, 0, 1.0)


def test_runs_that_differ_on_known_images_give_the_hand_computed_figures():
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.5
    b = a.copy()
    wrong_in_a, right_in_a = np.flatnonzero(~a)[:16], np.flatnonzero(a)[:6]
    b[wrong_in_a], b[right_in_a] = True, False  # b gains 16 images and loses 6
    result = paired(a, b)
    assert (result.only_a, result.only_b, result.images) == (6, 16, 400)
    assert result.difference == pytest.approx(100 * 10 / 400)  # +2.5 points
    assert result.p_value == pytest.approx(scipy_stats.binomtest(16, 22, 0.5).pvalue)
    assert result.low < result.difference < result.high
    # the multinomial shortcut against a plain bootstrap that resamples image indices
    idx = np.random.default_rng(2).integers(0, 400, size=(4000, 400))
    plain = 100 * (b[idx].mean(1) - a[idx].mean(1))
    low, high = np.percentile(plain, [2.5, 97.5])
    assert result.low == pytest.approx(low, abs=0.3) and result.high == pytest.approx(high, abs=0.3)


def test_welch_interval_of_the_seeds_means_by_hand():
    a, b = Seeds((76.1, 76.4, 75.9)), Seeds((76.8, 77.3, 76.6, 77.0))
    diff, low, high = welch(a, b)
    va, vb = np.var(a.values, ddof=1) / 3, np.var(b.values, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)  # Welch-Satterthwaite
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert diff == pytest.approx(b.mean - a.mean)
    assert (low, high) == (pytest.approx(diff - half), pytest.approx(diff + half))
    assert welch(Seeds((1.0,)), b) is None  # one seed: no spread to go by


def test_the_report_says_which_noise_is_larger():
    error = sampling_error(76.0, 50_000)
    assert error == pytest.approx(100 * math.sqrt(0.76 * 0.24 / 50_000))  # about 0.19 points
    assert larger_noise(0.11, error).startswith("the val-image sampling error")
    assert larger_noise(0.5, error).startswith("seed-to-seed spread")


def test_arms_are_parsed_and_flags_compare_sets_are_refused(capsys):
    assert parse_arm('fast=--recipe fast --pL "0.8"').flags == ("--recipe", "fast", "--pL", "0.8")
    with pytest.raises(ValueError, match="NAME="):
        parse_arm("--recipe fast")
    for argv, message in (
        (["--arm", "a=--sd 0", "--arm", "a=--sd 1"], "--arm names must differ"),
        (["--arm", "a=--seed 3"], "--seed (in --arm a)"),
        (["--arm", "a b=--sd 0"], "NAME="),
        (["--seeds", "0"], "--seeds: must be a positive integer"),
    ):
        with pytest.raises(SystemExit):
            compare_main(argv)
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory) -> Path:
    from prep.build import PrepOptions, build
    from prep.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "data")
    build(root / "data", root / "shards", PrepOptions(), workers=2)
    return root / "shards"


@pytest.mark.slow
def test_two_arms_and_two_seeds_on_the_digits_make_four_runs_and_the_whole_report(
    digits_shards, tmp_path, capsys
):
    out = tmp_path / "compare"
    argv = ["--data_dir", str(digits_shards), "--out", str(out), "--seeds", "2"]
    argv += ["--arm", "plain=--sd 0", "--arm", "sd=--sd 1 --pL 0.5"]
    argv += ["--epochs", "2", "--max_steps_per_epoch", "2", "--image_size", "32"]
    argv += ["--batch", "32", "--workers", "2", "--warmup_epochs", "0", "--no_flip"]
    argv += ["--eval_every", "2"]  # one evaluation per run: its best weights are its final ones
    assert compare_main(argv) == 0
    runs = [out / arm / f"seed{s}" for arm in ("plain", "sd") for s in (42, 43)]
    for run in runs:
        assert (run / "val_final.npz").is_file(), run
        config = json.loads((run / "config.json").read_text())["config"]
        assert config["seed"] == int(run.name[4:]) and config["sd"] == (run.parent.name == "sd")
    record = json.loads((out / "comparison.json").read_text())
    val_images = json.loads((digits_shards / "manifest.json").read_text())["splits"]["val"]
    assert [(t["b"], t["weights"]) for t in record["paired"]] == [
        ("sd/seed42", "final"),
        ("sd/seed43", "final"),
    ]
    for test in record["paired"]:
        assert test["images"] == val_images["num_samples"]
        assert test["low"] <= test["difference"] <= test["high"]
        assert 0 <= test["p_value"] <= 1 and "McNemar p = " in test["verdict"]
    seeds = record["seeds"]
    assert set(seeds["arms"]) == {"plain", "sd"} and len(seeds["arms"]["sd"]["final_values"]) == 2
    assert {w["weights"] for w in seeds["welch"]} == {"final", "best"}
    text = (out / "comparison.md").read_text()
    for phrase in ("## Is the difference real?", "(mean ± sd)", "Welch 95% CI", "- Noise: "):
        assert phrase in text
    colours = {c for _, c in Image.open(out / "comparison.png").getcolors(maxcolors=100_000)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # the arms' means
    assert (165, 200, 225) in colours  # a seed of the first arm, faintly
    stamps = {p: p.stat().st_mtime for r in runs for p in (r / "last.pt", r / "val_final.npz")}
    capsys.readouterr()
    assert compare_main(argv) == 0  # the rerun trains and evaluates nothing
    said = capsys.readouterr().out
    assert said.count("has finished its 2 epochs; skipping it") == 4
    assert "compare: training" not in said
    assert stamps == {p: p.stat().st_mtime for p in stamps}
