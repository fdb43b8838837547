"""python -m train.compare: train the baseline (--sd 0) and stochastic depth (--sd 1) with
everything else equal, then report both side by side.

Runs live in OUT/baseline and OUT/sd and resume like the trainer: rerunning continues what is
unfinished and skips what is done. Both runs' TensorBoard logs sit under OUT, so
`tensorboard --logdir OUT` shows them together. Any other flag goes to both trainers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch

from train.report import ReportError, report

RUNS = {"baseline": ["--sd", "0"], "sd": ["--sd", "1"]}


def finished(run_dir: Path, epochs: int) -> bool:
    summary = run_dir / "training_summary.json"
    if not summary.is_file():
        return False
    return json.loads(summary.read_text()).get("epochs_completed", 0) >= epochs


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def command(nproc: int, run_dir: Path, args: argparse.Namespace, extra: list[str], sd_flags):
    """The trainer's command line: torchrun over nproc GPUs, or one plain process."""
    launcher = [sys.executable]  # one process: no rendezvous needed
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [
        *launcher,
        "-m",
        "train",
        "--data_dir",
        args.data_dir,
        "--out",
        str(run_dir),
        "--depth",
        str(args.depth),
        "--epochs",
        str(args.epochs),
        *sd_flags,
        *extra,
    ]


def stream(name: str, proc: subprocess.Popen) -> None:
    """Copy a run's output line by line, each prefixed with the run's name."""
    for line in proc.stdout:
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m train.compare",
        description=__doc__.split("\n\n")[0],
        epilog="Every other flag (--batch, --mixup, --pL, ...) is passed to both trainers; "
        "see python -m train --help.",
    )
    p.add_argument("--data_dir", default="shards", help="shards folder written by make shards")
    p.add_argument("--out", default="results/compare-rn50", help="compare folder")
    p.add_argument("--depth", type=int, default=50, choices=[50, 101, 152], help="ResNet depth")
    p.add_argument("--epochs", type=int, default=120, help="epochs of each run")
    p.add_argument(
        "--mode",
        choices=["sequential", "parallel"],
        default="sequential",
        help="sequential: one run after the other on all GPUs; parallel: both at once",
    )
    p.add_argument(
        "--gpu_split",
        action="store_true",
        help="parallel mode: give each run half of the visible GPUs (else both share them all)",
    )
    args, extra = p.parse_known_args(argv)
    if "--sd" in extra or any(a.startswith("--sd=") for a in extra):
        p.error("--sd is set by compare: the baseline gets --sd 0 and the other run --sd 1")
    if "--out" in extra or "--resume" in extra:
        p.error("--out and --resume are set by compare for each run")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    try:
        return compare(*parse_args(argv))
    except KeyboardInterrupt:  # the trainers got the Ctrl-C too and saved their checkpoints
        print("compare: interrupted; rerun the same command to continue")
        return 130


def compare(args: argparse.Namespace, extra: list[str]) -> int:
    out = Path(args.out)
    gpus = visible_gpus()
    todo = {name: flags for name, flags in RUNS.items() if not finished(out / name, args.epochs)}
    for name in RUNS.keys() - todo.keys():
        print(f"compare: {out / name} has finished its {args.epochs} epochs; skipping it")
    if args.mode == "parallel" and args.gpu_split and len(gpus) < 2:
        print(f"compare: error: --gpu_split needs at least 2 visible GPUs, found {len(gpus)}")
        return 2
    failed = []
    if args.mode == "sequential":
        for name, flags in todo.items():
            print(f"compare: training {name} in {out / name}")
            cmd = command(max(1, len(gpus)), out / name, args, extra, flags)
            if subprocess.run(cmd).returncode != 0:
                failed.append(name)
    else:
        halves = {"baseline": gpus[: len(gpus) // 2], "sd": gpus[len(gpus) // 2 :]}
        procs = {}
        for name, flags in todo.items():
            share = halves[name] if args.gpu_split else gpus
            env = dict(os.environ)
            if share:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
            where = f" on GPUs {','.join(share)}" if share else ""
            print(f"compare: training {name} in {out / name}{where}")
            cmd = command(max(1, len(share)), out / name, args, extra, flags)
            procs[name] = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
        threads = [threading.Thread(target=stream, args=(n, p)) for n, p in procs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        print(f"compare: {', '.join(failed)} did not finish: fix the cause and rerun to continue")
        return 1
    try:
        table = report([out / "baseline", out / "sd"], out)
    except ReportError as e:
        print(f"compare: error: {e}")
        return 2
    print(
        f"\n{table}\nwrote {out}/comparison.csv, comparison.md, comparison.png; "
        f"curves: tensorboard --logdir {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
