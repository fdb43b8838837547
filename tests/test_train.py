"""train/: the trainer end to end on the CPU, on generated shards at a small image size."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from train import checkpoint
from train.config import ConfigError, check, derive, parse_config
from train.logs import HISTORY_FIELDS
from train.main import main
from train.schedule import FINAL_LR, lr_at

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--image_size", "32", "--batch", "8", "--workers", "2", "--warmup_epochs", "1"]


def run_main(shards: Path, out: Path, *extra: str) -> int:
    return main(["--data_dir", str(shards), "--out", str(out), *FAST, *extra])


def spawn(shards: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "train",
        "--data_dir",
        str(shards),
        "--out",
        str(out),
        *FAST,
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, **kwargs)


def history(out: Path) -> list[dict]:
    with open(out / "training_history.csv") as f:
        return list(csv.DictReader(f))


TIMING = ("epoch_seconds", "images_per_second", "run_seconds")  # differ between any two runs


def comparable(rows: list[dict]) -> list[dict]:
    """History without the timing columns, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def scalars(out: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


@pytest.fixture(scope="module")
def two_epochs(tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert run_main(tiny_shards, out, "--epochs", "2", "--log_every", "1", "--sd", "1") == 0
    return out


def test_a_two_epoch_run_writes_every_output(two_epochs, tiny_shards):
    out = two_epochs
    for name in (
        "last.pt",
        "best.pt",
        "training_history.csv",
        "training_summary.csv",
        "training_summary.json",
        "config.json",
    ):
        assert (out / name).is_file(), name
    plain = torch.load(out / "last.pt")  # torch's default weights_only: no allowlist needed
    assert plain["format"] == checkpoint.FORMAT and plain["epoch"] == 2
    rows = history(out)
    assert list(rows[0]) == HISTORY_FIELDS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and 0 <= float(r["train_top1"]) <= 1
        assert 0 <= float(r["val_top1"]) <= float(r["val_top5"]) <= 1
        assert float(r["epoch_seconds"]) > 0 and float(r["images_per_second"]) > 0
    summary = json.loads((out / "training_summary.json").read_text())
    best = max(rows, key=lambda r: float(r["val_top1"]))
    assert summary["best_top1"] == pytest.approx(float(best["val_top1"]))
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["val_top1"]))
    assert summary["epochs_completed"] == 2 and summary["config"]["sd"] == 1
    assert summary["parameters"] > 20_000_000
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["depth"] == 50 and config["derived"]["lr"] == pytest.approx(
        0.1 * 8 / 256
    )
    assert "torch" in config["machine"] and config["code_version"]
    last = checkpoint.load(out / "last.pt")
    assert last["epoch"] == 2 and last["steps_done"] == 0 and len(last["history"]) == 2
    assert "fc.weight" in last["model"] and last["num_classes"] == 3
    assert {"torch", "python", "numpy", "stochastic_depth"} <= set(last["rng"])
    assert len(scalars(out, "train/loss")) >= 4 and set(scalars(out, "epoch/val_top1")) == {1, 2}
    # exact validation counts: every val sample once
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert all(
        r["val_samples"] == manifest["splits"]["val"]["num_samples"] for r in last["history"]
    )
    assert all(
        r["train_samples"] == manifest["splits"]["train"]["num_samples"] for r in last["history"]
    )


def test_the_lr_follows_warmup_and_cosine_at_every_step(two_epochs):
    logged = scalars(two_epochs, "train/lr")
    config = json.loads((two_epochs / "config.json").read_text())
    steps_per_epoch = config["derived"]["steps_per_epoch"]
    base = config["derived"]["lr"]
    assert sorted(logged) == list(range(2 * steps_per_epoch))  # log_every 1: every step
    for step, value in logged.items():
        expected = lr_at(
            step, base_lr=base, warmup_steps=steps_per_epoch, total_steps=2 * steps_per_epoch
        )
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_lr_formula_at_chosen_steps():
    def lr(step):
        return lr_at(step, base_lr=0.4, warmup_steps=10, total_steps=110)

    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.2)
    assert lr(10) == pytest.approx(0.4)
    assert lr(60) == pytest.approx(
        FINAL_LR + (0.4 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * 50 / 99))
    )
    assert lr(109) == pytest.approx(FINAL_LR)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 109))


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch", "10", "--accum", "11"], "leaves no sample per micro-batch"),
        (["--sd", "1", "--pL", "1.5"], "--pL 1.5 must be in (0, 1]"),
        (["--sd", "1", "--pL", "0"], "--pL 0.0 must be in (0, 1]"),
        (["--min_res", "48"], "--min_res 48 must be a multiple of 32"),
        (["--min_res", "64", "--image_size", "200"], "--image_size 200 must be a multiple of 32"),
        (["--resume", "/nowhere/last.pt"], "no such checkpoint"),
        (["--warmup_epochs", "9", "--epochs", "3"], "--warmup_epochs 9.0 must be in [0, --epochs]"),
    ],
)
def test_impossible_flags_are_refused_clearly(flags, message):
    with pytest.raises(ConfigError) as e:
        check(parse_config(flags), world_size=1)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "flags,warmup",
    [
        (["--epochs", "120"], 5.0),  # the default
        (["--epochs", "20"], 5.0),
        (["--epochs", "10"], 2.5),  # a quarter of a short run
        (["--epochs", "1"], 0.25),
        (["--epochs", "1", "--warmup_epochs", "0.5"], 0.5),  # given: used as it is
        (["--epochs", "10", "--warmup_epochs", "10"], 10.0),
    ],
)
def test_the_default_warmup_fits_short_runs_and_a_given_one_is_kept(flags, warmup):
    cfg = parse_config(flags)
    check(cfg, world_size=1)
    assert derive(cfg, 0, 1, 0).warmup_epochs == warmup


def test_a_batch_needs_two_samples_a_rank_and_no_longer_divides_over_them():
    with pytest.raises(ConfigError, match="--batch 5 gives some of the 3 ranks fewer than 2"):
        check(parse_config(["--batch", "5"]), world_size=3)
    check(parse_config(["--batch", "256"]), world_size=3)  # pieces of 86, 85, 85
    with pytest.raises(ConfigError, match="--repeated_aug 3 must be at least 1 and divide"):
        check(parse_config(["--batch", "256", "--repeated_aug", "3"]), world_size=1)


def test_cli_errors_name_the_problem_without_a_traceback(tiny_imagenet, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True
        )

    raw_folder = str(tiny_imagenet["root"])
    # A new user's first try: a raw ImageNet folder and a one-epoch run. The answer is the
    # make shards command, not a complaint about the default warmup.
    raw = run("--data_dir", raw_folder, "--out", str(tmp_path / "o"), "--epochs", "1")
    assert raw.returncode == 2 and "Traceback" not in raw.stderr
    assert f"make shards DATA={raw_folder}" in raw.stderr and "warmup" not in raw.stderr
    depth = run("--depth", "34")
    assert depth.returncode == 2 and "invalid choice: 34" in depth.stderr
    # Every problem at once: the flags' and the data folder's.
    bad = run("--data_dir", raw_folder, "--sd", "1", "--pL", "2", "--batch", "1")
    assert bad.returncode == 2 and "--pL 2.0" in bad.stderr and "--batch 1" in bad.stderr
    assert "make shards DATA=" in bad.stderr and "Traceback" not in bad.stderr
    helptext = run("--help").stdout
    for flag in (
        "--data_dir",
        "--sd_mode",
        "--pL",
        "--mixup",
        "--amp_dtype",
        "--resume",
        "--hw_decoder_load",
        "--synthetic",
    ):
        assert flag in helptext


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a folder: its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_rerun_of_a_finished_run_changes_nothing_and_other_flags_are_refused(
    two_epochs, tiny_shards, copy_of, capsys
):
    """A run folder holds one run: rerunning the finished run with its flags trains nothing
    and touches no file (no config.json rewritten, no TensorBoard record added); other flags
    that change what is trained are refused, each named in one message, and change nothing
    either; flags of where and how fast (--workers, --log_every) are no change."""
    out = copy_of(two_epochs)
    before = files_of(out)
    flags = ["--epochs", "2", "--log_every", "1", "--sd", "1"]
    assert run_main(tiny_shards, out, *flags) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert run_main(tiny_shards, out, *flags, "--log_every", "3", "--workers", "1") == 0
    assert files_of(out) == before
    assert run_main(tiny_shards, out, *flags, "--lr", "0.5", "--image_size", "64") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run of other flags" in err, err
    assert "--lr None (now 0.5)" in err and "--image_size 32 (now 64)" in err
    assert run_main(tiny_shards, out, *flags, "--recipe", "fast", "--no_blurpool") == 2
    assert "--recipe seed (now fast)" in capsys.readouterr().err
    assert files_of(out) == before


def test_allowed_changes_are_recorded_where_they_happened_beside_the_original_values(
    two_epochs, tiny_shards, copy_of
):
    out = copy_of(two_epochs)
    flags = ["--epochs", "3", "--log_every", "1", "--sd", "1", "--label_smoothing", "0.2"]
    assert run_main(tiny_shards, out, *flags, "--allow_changes") == 0
    record = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "training_summary.json").read_text())
    expected = [
        {"epoch": 3, "step": 0, "flag": "epochs", "old": 2, "new": 3},
        {"epoch": 3, "step": 0, "flag": "label_smoothing", "old": 0.1, "new": 0.2},
    ]
    assert record["changes"] == summary["changes"] == expected
    assert record["config"]["epochs"] == summary["config"]["epochs"] == 2  # as it started
    assert record["config"]["label_smoothing"] == 0.1
    assert summary["epochs_completed"] == 3 and len(history(out)) == 3
    assert checkpoint.load(out / "last.pt")["config"]["label_smoothing"] == 0.2  # trained now
    assert run_main(tiny_shards, out, *flags) == 0  # the same flags again: no change, finished


def test_resume_with_another_architecture_is_refused(two_epochs, tiny_shards, capsys):
    assert run_main(tiny_shards, two_epochs, "--epochs", "3", "--depth", "101") == 2
    assert "--depth 50 (now 101)" in capsys.readouterr().err
    assert run_main(tiny_shards, two_epochs, "--epochs", "3", "--blurpool") == 2
    assert "--blurpool False (now True)" in capsys.readouterr().err  # same keys, other network


def test_a_checkpoint_of_a_format_this_code_does_not_read_is_refused(
    two_epochs, tiny_shards, tmp_path, capsys
):
    """A last.pt of another format (format 99, or none: the code before formats were
    numbered) stops resume and evaluate with one line naming the format this code reads."""
    from train.evaluate import main as evaluate_main

    saved = checkpoint.load(two_epochs / "last.pt")
    assert saved["format"] == checkpoint.FORMAT
    for other, said in ((99, "format 99"), (None, "format 1")):
        out = tmp_path / f"format-{other}"
        out.mkdir()
        state = {k: v for k, v in saved.items() if k != "format"}
        checkpoint.save(out / "last.pt", state if other is None else state | {"format": other})
        assert run_main(tiny_shards, out, "--epochs", "3") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
        assert f"this code reads format {checkpoint.FORMAT} only" in err
        argv = ["--data_dir", str(tiny_shards), "--weights", str(out / "last.pt")]
        assert evaluate_main(argv) == 2
        assert said in capsys.readouterr().err


def test_a_non_finite_loss_stops_cleanly_and_keeps_good_checkpoints(tiny_shards, tmp_path, capsys):
    out = tmp_path / "nan"
    assert run_main(tiny_shards, out, "--epochs", "1") == 0
    good = checkpoint.load(out / "last.pt")
    best = (out / "best.pt").read_bytes()
    code = run_main(
        tiny_shards, out, "--epochs", "3", "--lr", "1e30", "--log_every", "1", "--allow_changes"
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite at epoch 2, step" in err
    after = checkpoint.load(out / "last.pt")
    assert after["epoch"] == 1  # the last good state
    for k, v in good["model"].items():
        assert torch.equal(after["model"][k], v)
    assert (out / "best.pt").read_bytes() == best
    assert all(torch.isfinite(v).all() for v in after["model"].values() if v.is_floating_point())


# A commit of the code before checkpoints carried a format (their layout is format 1).
UNNUMBERED_FORMAT_COMMIT = "3f1884f"


def code_of(commit: str, into: Path) -> Path:
    try:
        archive = subprocess.run(
            ["git", "archive", commit, "models", "prep", "train"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history: commit {commit} is not in this clone")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.mark.slow
def test_a_checkpoint_of_another_format_is_refused_in_one_line(
    two_epochs, tiny_shards, tmp_path, capsys
):
    """last.pt of the code before formats were numbered is refused by resume and by
    evaluate, each in one line naming the format this code reads; today's last.pt carries
    its format and loads with a plain torch.load (weights_only, torch's default)."""
    old = code_of(UNNUMBERED_FORMAT_COMMIT, tmp_path / "old")
    out = tmp_path / "old-run"
    flags = ["--data_dir", str(tiny_shards), "--out", str(out), *FAST, "--epochs", "1"]
    trained = subprocess.run(
        [sys.executable, "-m", "train", *flags], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(old)}, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "format" not in checkpoint.load(out / "last.pt")
    capsys.readouterr()
    assert main([*flags, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint of format 1" in err, err
    assert f"reads format {checkpoint.FORMAT} only" in err
    from train.evaluate import main as evaluate_main

    weights = ["--weights", str(out / "last.pt"), "--data_dir", str(tiny_shards)]
    assert evaluate_main([*weights, "--device", "cpu", "--workers", "2"]) == 2
    assert "checkpoint of format 1" in capsys.readouterr().err
    plain = torch.load(two_epochs / "last.pt")  # no allowlist, no weights_only=False
    assert plain["format"] == checkpoint.FORMAT and plain["epoch"] == 2


@pytest.mark.slow
def test_resume_after_kill_9_reproduces_an_uninterrupted_run(tiny_shards, tmp_path):
    flags = ["--epochs", "3", "--sd", "1", "--mixup", "0.2", "--log_every", "1"]
    reference = tmp_path / "reference"
    assert run_main(tiny_shards, reference, *flags) == 0
    out = tmp_path / "killed"
    proc = spawn(tiny_shards, out, *flags, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "training_history.csv").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2 (or 3 on a fast machine: either is mid-run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(history(out)) < 3  # killed mid-run: the finished epochs are kept
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--data_dir",
            str(tiny_shards),
            "--out",
            str(out),
            *FAST,
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout + result.stderr
    assert comparable(history(out)) == comparable(history(reference))
    a, b = (
        checkpoint.load(out / "last.pt")["model"],
        checkpoint.load(reference / "last.pt")["model"],
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_the_resumed_run_ends_as_an_uninterrupted_one(
    tiny_shards, tmp_path
):
    flags = ["--epochs", "4", "--log_every", "1", "--batch", "4"]  # long enough to interrupt
    reference = tmp_path / "reference"
    assert run_main(tiny_shards, reference, *flags) == 0
    out = tmp_path / "term"
    proc = spawn(
        tiny_shards, out, *flags, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "tensorboard").glob("events*")):
        time.sleep(0.05)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "rerun the same command to resume" in output
    saved = checkpoint.load(out / "last.pt")
    assert saved["steps_done"] > 0 or saved["epoch"] > 0
    assert run_main(tiny_shards, out, *flags) == 0
    assert comparable(history(out)) == comparable(history(reference))


@pytest.mark.slow
def test_a_stop_inside_an_accumulated_step_resumes_bit_for_bit(tiny_shards, tmp_path, monkeypatch):
    """SIGTERM lands on the first micro-batch of a step of --accum 2: the run goes on to the
    end of that step, saves there, and the resumed run ends with the weights, optimizer and
    history of the uninterrupted one, to the bit (no gradient half accumulated is lost)."""
    import train.loop as loop

    flags = ["--epochs", "1", "--batch", "6", "--accum", "2", "--log_every", "1"]
    flags += ["--mixup", "0.2", "--random_erase", "0.5"]
    reference = tmp_path / "reference"
    assert run_main(tiny_shards, reference, *flags) == 0
    real, boundaries = loop.train_step, []

    def stepping(run, images, labels, boundary, step=0, share=1.0):
        boundaries.append(boundary)
        if len(boundaries) == 3:  # micro-batch 3 of the epoch: the first of step 2 (of 3)
            assert not boundary
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run, images, labels, boundary, step, share)

    monkeypatch.setattr(loop, "train_step", stepping)
    out = tmp_path / "stopped"
    assert run_main(tiny_shards, out, *flags) == 128 + signal.SIGTERM
    assert boundaries == [False, True, False, True]  # it finished step 2, then stopped
    assert checkpoint.load(out / "last.pt")["steps_done"] == 2
    monkeypatch.undo()
    assert run_main(tiny_shards, out, *flags) == 0
    a, b = checkpoint.load(out / "last.pt"), checkpoint.load(reference / "last.pt")
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, state in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], state["momentum_buffer"])
    assert comparable(history(out)) == comparable(history(reference))


@pytest.mark.slow
def test_two_gloo_ranks_with_batch_stochastic_depth_stay_identical(tiny_shards, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "train",
        "--data_dir",
        str(tiny_shards),
        "--out",
        str(out),
        *FAST,
        "--epochs",
        "2",
        "--sd",
        "1",
        "--sd_mode",
        "batch",
        "--pL",
        "0.5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = checkpoint.load(out / "last.pt")
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    for row in last["history"]:
        assert row["replicas_identical"] is True  # per-tensor sums equal on both ranks
        assert row["val_samples"] == manifest["splits"]["val"]["num_samples"]  # summed exactly
        assert row["train_samples"] == manifest["splits"]["train"]["num_samples"]
    assert json.loads((out / "config.json").read_text())["derived"]["world_size"] == 2
    assert result.stdout.count("epoch 1/2:") == 1  # one summary line: rank 0 only


def test_a_stop_after_an_epochs_last_batch_resumes_into_its_evaluation(tiny_shards, tmp_path):
    """SIGTERM can land after the last batch of an epoch: last.pt then says epoch e, every
    batch done. The resumed run trains nothing more in e, evaluates it and logs it as an
    uninterrupted run does (its LR included), then goes on."""
    flags = ["--epochs", "2", "--log_every", "1"]
    reference = tmp_path / "reference"
    assert run_main(tiny_shards, reference, *flags) == 0
    stopped = tmp_path / "stopped"
    # One epoch alone trains as the reference's first: with FAST's one-epoch warmup, epoch 1 is
    # all warmup, whose LR does not depend on the run's length.
    assert run_main(tiny_shards, stopped, "--epochs", "1", "--log_every", "1") == 0
    # last.pt of that run as the stop handler would have saved it just before evaluating
    state = checkpoint.load(stopped / "last.pt")
    row = state["history"][0]
    count = row["train_samples"]
    totals = [row["train_loss"] * count, row["train_top1"] * count, count]
    config = json.loads((stopped / "config.json").read_text())
    batches = config["derived"]["steps_per_epoch"]
    state.update(
        epoch=0,
        steps_done=batches,
        history=[],
        best_top1=-1.0,
        totals=torch.tensor([totals], dtype=torch.float32),  # (ranks, 3)
        seconds=row["epoch_seconds"],
    )
    state["config"]["epochs"] = 2
    checkpoint.save(stopped / "last.pt", state)
    (stopped / "best.pt").unlink()
    assert run_main(tiny_shards, stopped, *flags) == 0
    assert comparable(history(stopped)) == comparable(history(reference))


def test_cache_copies_the_shards_to_ram_and_removes_them_at_exit(tiny_shards, tmp_path, capsys):
    out = tmp_path / "cached"
    assert run_main(tiny_shards, out, "--epochs", "1", "--cache") == 0
    said = capsys.readouterr().out
    assert "--cache:" in said and "copied to /dev/shm/imagenet-shards-" in said
    used = json.loads((out / "config.json").read_text())["derived"]["data_dir_used"]
    assert used.startswith("/dev/shm/") and not Path(used).exists()  # removed at exit
    assert len(history(out)) == 1


def test_synthetic_input_measures_the_model_alone(tmp_path):
    out = tmp_path / "synthetic"
    code = main(
        [
            "--synthetic",
            "--data_dir",
            str(tmp_path / "none"),
            "--out",
            str(out),
            *FAST,
            "--epochs",
            "1",
            "--warmup_epochs",
            "0",
            "--max_steps_per_epoch",
            "2",
        ]
    )
    assert code == 0
    row = checkpoint.load(out / "last.pt")["history"][0]
    assert row["train_samples"] == 2 * 8 and "val_top1" not in row  # no data: no validation
    assert json.loads((out / "config.json").read_text())["derived"]["num_classes"] == 1000


def test_a_short_run_says_how_it_fitted_the_default_warmup(tmp_path, capsys):
    out = tmp_path / "short"
    flags = ["--synthetic", "--data_dir", str(tmp_path / "none"), "--out", str(out)]
    flags += ["--image_size", "32", "--batch", "8", "--epochs", "2", "--max_steps_per_epoch", "4"]
    flags += ["--log_every", "1"]
    assert main(flags) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "warmup" in line]
    assert said == [
        "warmup: 0.5 epochs, a quarter of this 2-epoch run (the default 5 is for longer runs; "
        "--warmup_epochs sets it)"
    ]
    assert json.loads((out / "config.json").read_text())["derived"]["warmup_epochs"] == 0.5
    lrs = scalars(out, "train/lr")
    assert lrs[0] == 0 and lrs[2] == pytest.approx(max(lrs.values()))  # warm after 2 of 8 steps


def test_gradient_accumulation_takes_one_step_per_accum_batches(tiny_shards, tmp_path):
    out = tmp_path / "accum"
    assert run_main(tiny_shards, out, "--epochs", "1", "--accum", "2", "--log_every", "1") == 0
    derived = json.loads((out / "config.json").read_text())["derived"]
    assert derived["micro_batch"] == 4
    # 21 samples at batch 8: 2 steps, the second taking the remainder (13 samples: micro-
    # batches of 5, 4 and 4); every sample trained
    assert derived["steps_per_epoch"] == 2
    assert sorted(scalars(out, "train/lr")) == [0, 1]
    assert checkpoint.load(out / "last.pt")["history"][0]["train_samples"] == 21


def test_resume_none_starts_over_and_resume_path_continues_elsewhere(
    two_epochs, tiny_shards, tmp_path, capsys
):
    fresh = tmp_path / "fresh"
    assert run_main(tiny_shards, fresh, "--epochs", "1") == 0
    assert run_main(tiny_shards, fresh, "--epochs", "1", "--resume", "none") == 0
    assert "resuming" not in capsys.readouterr().out and len(history(fresh)) == 1
    elsewhere = tmp_path / "elsewhere"
    code = run_main(
        tiny_shards,
        elsewhere,
        "--epochs",
        "3",
        "--sd",
        "1",
        "--resume",
        str(two_epochs / "last.pt"),
        "--allow_changes",  # 3 epochs where it had 2
    )
    assert code == 0
    assert "resuming from" in capsys.readouterr().out
    assert [int(r["epoch"]) for r in history(elsewhere)] == [1, 2, 3]
