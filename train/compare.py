"""python -m train.compare: train several arms with everything else equal (by default the
baseline, --sd 0, and stochastic depth, --sd 1), over one or more seeds, evaluate every run on
the same val images (and on evaluation sets: --eval_splits, --real_labels), and report
whether the differences are real.

Runs live in OUT/ARM (one seed) or OUT/ARM/seedS (--seeds N) and resume like the trainer:
rerunning continues what is unfinished and skips what is done, evaluations included. Every
run's TensorBoard logs sit under OUT, so `tensorboard --logdir OUT` shows them together. Any
other flag goes to every trainer; an arm's own flags come after them and win.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from models import STAGE_BLOCKS
from prep.flags import FlagParser
from train.comparison import (
    DEFAULT_ARMS,
    Evaluation,
    RunSpec,
    evaluation_todo,
    finished,
    finished_words,
    parse_arm,
    run_specs,
)
from train.comparison_report import ReportError, write_report
from train.real_labels import RealLabelsError, read_real_labels
from train.shards import TRAINER_SPLITS, ShardsError, open_shards

SET_BY_COMPARE = ("--out", "--resume", "--seed")


@dataclass(frozen=True)
class Launch:
    """How compare starts processes: the shards, the common trainer flags, the GPUs."""

    data_dir: str
    depth: int
    epochs: int | None
    extra: list[str]  # common trainer flags
    eval_splits: tuple[str, ...] = ()  # evaluation sets beside val (--eval_splits)
    real_labels: str | None = None  # --real_labels: ReaL on val too


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


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


def train_command(nproc: int, run: RunSpec, launch: Launch) -> list[str]:
    epochs = ["--epochs", str(launch.epochs)] if launch.epochs is not None else []
    return [
        *launcher(nproc),
        "-m", "train",
        "--data_dir", launch.data_dir,
        "--out", str(run.directory),
        "--depth", str(launch.depth),
        *epochs,
        *launch.extra,
        *run.arm.flags,
        "--seed", str(run.seed),
    ]  # fmt: skip


def evaluate_command(nproc: int, todo: Evaluation, launch: Launch) -> list[str]:
    """train.evaluate on a split of the shards, writing every image's logits (what the paired
    tests need); DALI threads and device follow the trainer flags when they name them."""
    passed = ["--ema"] if todo.ema else []
    if todo.real:
        passed += ["--real_labels", str(launch.real_labels)]
    for flag in ("--workers", "--device"):
        if flag in launch.extra:
            passed += [flag, launch.extra[launch.extra.index(flag) + 1]]
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
            if not execute(train_command(nproc, run, launch), run.name, env, prefix):
                return False
        real = launch.real_labels is not None
        for todo in evaluation_todo(run.directory, launch.eval_splits, real):
            command = evaluate_command(nproc, todo, launch)
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


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        prog="python -m train.compare",
        description=__doc__.split("\n\n")[0],
        epilog="Every other flag (--batch, --mixup, --pL, ...) is passed to every trainer; "
        "see python -m train --help.",
    )
    p.add_argument("--data_dir", default="shards", help="shards folder written by make shards")
    p.add_argument("--out", default="results/compare-rn50", help="compare folder")
    p.add_argument(
        "--depth", type=int, default=50, choices=sorted(STAGE_BLOCKS), help="ResNet depth"
    )
    p.add_argument(
        "--epochs", type=int, help="epochs of every run (default: the trainer's or the recipe's)"
    )
    p.add_argument(
        "--arm",
        action="append",
        metavar='NAME="FLAGS"',
        help='an arm: a name and its trainer flags, e.g. --arm fast="--recipe fast"; '
        'repeatable, the first is the reference (default: baseline="--sd 0" sd="--sd 1")',
    )
    p.add_argument(
        "--eval_splits",
        metavar="NAME,...",
        help="evaluation sets of the shards (added by `python -m prep eval_set`, e.g. "
        "imagenetv2,sketch): every run's final and best weights are evaluated on each too, "
        "and the report tests the differences on each",
    )
    p.add_argument(
        "--real_labels",
        metavar="REAL_JSON",
        help="ReaL labels of the val images (real.json): the report tests the differences "
        "in ReaL top-1 too, on the images it labels",
    )
    p.add_argument("--seeds", type=int, default=1, help="runs per arm, seeds SEED, SEED+1, ...")
    p.add_argument("--seed", type=int, default=42, help="the first seed")
    p.add_argument(
        "--mode",
        choices=["sequential", "parallel"],
        default="sequential",
        help="sequential: one run after the other on all GPUs; parallel: the arms at once",
    )
    p.add_argument(
        "--gpu_split",
        action="store_true",
        help="parallel mode: split the visible GPUs evenly among the arms (else all share them)",
    )
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = build_parser()
    args, extra = p.parse_known_args(argv)
    args.eval_splits = tuple(dict.fromkeys(n for n in (args.eval_splits or "").split(",") if n))
    try:
        args.arms = [parse_arm(a) for a in args.arm] if args.arm else list(DEFAULT_ARMS)
    except ValueError as e:
        p.error(str(e))
    names = [a.name for a in args.arms]
    if len(set(names)) != len(names):
        p.error(f"--arm names must differ: {', '.join(names)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if not args.arm and ("--sd" in extra or any(a.startswith("--sd=") for a in extra)):
        p.error("--sd is set by compare: the baseline gets --sd 0 and the other run --sd 1")
    for flags, where in [(extra, "")] + [(a.flags, f" (in --arm {a.name})") for a in args.arms]:
        clash = [f for f in flags if f.split("=")[0] in SET_BY_COMPARE]
        if clash:
            p.error(f"{', '.join(clash)}{where}: --out, --resume and --seed are set by compare")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    try:
        return compare(*parse_args(argv))
    except KeyboardInterrupt:  # the trainers got the Ctrl-C too and saved their checkpoints
        print("compare: interrupted; rerun the same command to continue")
        return 130


def check_evaluation_sets(args: argparse.Namespace) -> str | None:
    """Before any training: what is wrong with --eval_splits and --real_labels, or None."""
    if not args.eval_splits and args.real_labels is None:
        return None
    try:
        shards = open_shards(args.data_dir)
        splits = shards.manifest["splits"]
        for name in args.eval_splits:
            if name in TRAINER_SPLITS:
                return f"--eval_splits {name}: {name} is the trainer's; name evaluation sets"
            if name not in splits:
                return (
                    f"--eval_splits {name}: {args.data_dir} has no such split (it has "
                    f"{', '.join(splits)}); add it with `python -m prep eval_set "
                    f"{args.data_dir} {name} SOURCE`"
                )
        if args.real_labels is not None:
            keys = shards.sample_keys("val")
            read_real_labels(Path(args.real_labels), keys, shards.num_classes)
    except (ShardsError, RealLabelsError) as e:
        return str(e)
    return None


def compare(args: argparse.Namespace, extra: list[str]) -> int:
    out = Path(args.out)
    problem = check_evaluation_sets(args)
    if problem is not None:
        print(f"compare: error: {problem}")
        return 2
    launch = Launch(
        args.data_dir, args.depth, args.epochs, extra, args.eval_splits, args.real_labels
    )
    runs = run_specs(args.arms, args.seeds, args.seed, out, extra, args.epochs)
    for run in runs:
        if finished(run):
            print(f"compare: {run.directory} has {finished_words(run)}; skipping it")
    gpus = visible_gpus()
    by_arm = {a.name: [r for r in runs if r.arm.name == a.name] for a in args.arms}
    if args.mode == "sequential":
        ok = all([run_arm_in_turn(r, launch, gpus, prefix=False) for r in by_arm.values()])
    else:
        if args.gpu_split and (len(gpus) < len(by_arm) or len(gpus) % len(by_arm)):
            print(
                f"compare: error: --gpu_split needs the visible GPUs ({len(gpus)}) to divide "
                f"evenly among the {len(by_arm)} arms"
            )
            return 2
        share = len(gpus) // len(by_arm) if args.gpu_split else 0
        results = {}

        def work(k: int, name: str) -> None:
            mine = gpus[k * share : (k + 1) * share] if args.gpu_split else gpus
            results[name] = run_arm_in_turn(by_arm[name], launch, mine, prefix=True)

        threads = [threading.Thread(target=work, args=kv) for kv in enumerate(by_arm)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = all(results.values())
    if not ok:
        print("compare: some runs did not finish: fix the cause and rerun to continue")
        return 1
    try:
        table = write_report({name: [r.directory for r in rs] for name, rs in by_arm.items()}, out)
    except ReportError as e:
        print(f"compare: error: {e}")
        return 2
    print(
        f"\n{table}\nwrote {out}/comparison.csv, comparison.md, comparison.png, "
        f"comparison.json; curves: tensorboard --logdir {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
