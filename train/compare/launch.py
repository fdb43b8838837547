"""How the comparison starts its processes: each run's trainer and its evaluations (as
`python -m train` and `python -m train.evaluate`, one process or torchrun over the run's
GPUs), one after the other for each arm, their output prefixed with the run's name when arms
run side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from train.compare.arms import Evaluation, RunSpec, evaluation_todo, finished


@dataclass(frozen=True)
class Launch:
    """What compare's evaluations need: the shards, the sets beyond val."""

    data_dir: str
    eval_splits: tuple[str, ...] = ()  # evaluation sets beside val (--eval_splits)
    real_labels: str | None = None  # --real_labels: ReaL on val too


def visible_gpus(count: int | None = None) -> list[str]:
    """The GPUs compare may use: the first `count` (all when None) of those visible."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        gpus = [g for g in env.split(",") if g.strip()]
    else:
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    return gpus[:count]


def launcher(nproc: int) -> list[str]:
    """One plain process, or torchrun over nproc GPUs of this machine."""
    if nproc <= 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]


def train_command(nproc: int, run: RunSpec) -> list[str]:
    return [*launcher(nproc), "-m", "train", *run.flags]


def evaluate_command(nproc: int, todo: Evaluation, run: RunSpec, launch: Launch) -> list[str]:
    """train.evaluate on a split of the shards, writing every image's logits (what the paired
    tests need), with the run's DALI threads and device."""
    passed = ["--ema"] if todo.ema else ["--no_ema"]
    if todo.real:
        passed += ["--real_labels", str(launch.real_labels)]
    passed += ["--workers", str(run.config.workers)] if run.config.workers else []
    passed += ["--device", run.config.device] if run.config.device else []
    return [
        *launcher(nproc),
        "-m", "train.evaluate",
        "--data_dir", launch.data_dir,
        "--weights", str(todo.weights),
        "--split", todo.split,
        "--logits", str(todo.logits),
        *passed,
    ]  # fmt: skip


def stream(name: str, proc: subprocess.Popen) -> None:
    """Copy a run's output line by line, each prefixed with the run's name."""
    for line in proc.stdout:
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()


def run_arm_in_turn(runs: list[RunSpec], launch: Launch, gpus: list[str], prefix: bool) -> bool:
    """Train then evaluate each run of `runs` in turn on `gpus`; whether all succeeded."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    nproc = max(1, len(gpus))
    for run in runs:
        if not finished(run):
            print(f"compare: training {run.name} in {run.directory}", flush=True)
            if not execute(train_command(nproc, run), run.name, env, prefix):
                return False
        real = launch.real_labels is not None
        for todo in evaluation_todo(run.directory, launch.eval_splits, real):
            command = evaluate_command(nproc, todo, run, launch)
            if not execute(command, run.name, env, prefix):
                return False
    return True


def execute(command: list[str], name: str, env: dict, prefix: bool) -> bool:
    """Run one trainer or evaluation; with `prefix`, each output line starts with [name]."""
    if prefix:
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1,
        )  # fmt: skip
        stream(name, proc)
        code = proc.wait()
    else:
        code = subprocess.run(command, env=env).returncode
    if code != 0:
        print(f"compare: {name}: {' '.join(command[1:4])} ... ended with exit code {code}")
    return code == 0
