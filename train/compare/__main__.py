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
import threading
from pathlib import Path

from models.flags import Flag, FlagParser
from prep.flags import positive
from train.compare.arms import (
    DEFAULT_ARMS,
    RunSpec,
    finished,
    finished_words,
    parse_arm,
    run_specs,
)
from train.compare.launch import Launch, run_arm_in_turn, visible_gpus
from train.compare.report import ReportError, write_report
from train.config import ConfigError, change_words, changed_flags, train_flags
from train.data import DaliMissing, require_dali
from train.logs import recorded_config
from train.real_labels import REAL_LABELS, RealLabelsError, read_real_labels
from train.shards import TRAINER_SPLITS, ShardsError, open_shards

SET_BY_COMPARE = ("--data_dir", "--out", "--resume", "--seed")

OUT = Flag(
    "out",
    str,
    "results/compare-rn50",
    "the comparison's folder: a run folder per arm (and seed), the report beside them",
)
ARM = Flag(
    "arm",
    str,
    None,
    'an arm: a name and its trainer flags, e.g. --arm fast="--recipe fast"; repeatable, the '
    'first is the reference (default: baseline="--sd 0" sd="--sd 1")',
    metavar='NAME="FLAGS"',
    repeated=True,
)
EVAL_SPLITS = Flag(
    "eval_splits",
    str,
    None,
    "evaluation sets of the shards (added by `python -m prep eval_set`, e.g. "
    "imagenetv2,sketch): every run's final and best weights are evaluated on each too, and "
    "the report tests the differences on each",
    metavar="NAME,...",
)
SEEDS = Flag("seeds", positive, 1, "runs per arm, with seeds SEED, SEED+1, ...", metavar="N")
MODE = Flag(
    "mode",
    str,
    "sequential",
    "sequential: one run after the other on all the GPUs; parallel: the arms at once",
    choices=("sequential", "parallel"),
)
GPU_SPLIT = Flag(
    "gpu_split",
    bool,
    False,
    "parallel mode: split the GPUs evenly among the arms (off: every arm uses all of them)",
)
GPUS = Flag(
    "gpus",
    positive,
    None,
    "use the first N of the visible GPUs (default: every one; none on a machine without a GPU: "
    "one process)",
    metavar="N",
)


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.compare",
        usage="python -m train.compare [compare's flags] [trainer flags]",
        description=__doc__.split("\n\n")[0],
        epilog="Every other flag (--depth, --epochs, --batch, --mixup, --pL, ...) is passed to "
        "every trainer: see python -m train --help.",
    )
    flags = train_flags()
    p.add(flags["data_dir"], OUT, ARM, EVAL_SPLITS, REAL_LABELS, SEEDS, flags["seed"], MODE)
    p.add(GPU_SPLIT, GPUS, flags["allow_changes"])
    return p


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """compare's own flags, and the trainer flags common to every run."""
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
    if not args.arm and ("--sd" in extra or any(a.startswith("--sd=") for a in extra)):
        p.error("--sd is set by compare: the baseline gets --sd 0 and the other run --sd 1")
    for flags, where in [(extra, "")] + [(a.flags, f" (in --arm {a.name})") for a in args.arms]:
        clash = [f for f in flags if f.split("=")[0] in SET_BY_COMPARE]
        if clash:
            p.error(f"{', '.join(clash)}{where}: {', '.join(SET_BY_COMPARE)} are set by compare")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    try:
        require_dali()
        return compare(args, extra)
    except (DaliMissing, ConfigError) as e:  # ConfigError: the trainer flags contradict
        print(f"compare: error: {e}")
        return 2
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


def other_flags(runs: list[RunSpec]) -> list[str]:
    """Each run whose folder holds a run trained with other flags: which, as 'ARM: --flag
    old (now new), ...'."""
    clashes = []
    for run in runs:
        recorded = recorded_config(run.directory)
        changed = [] if recorded is None else changed_flags(recorded, run.config)
        if changed:
            clashes.append(f"{run.name}: {change_words(changed)}")
    return clashes


def compare(args: argparse.Namespace, extra: list[str]) -> int:
    out = Path(args.out)
    problem = check_evaluation_sets(args)
    if problem is not None:
        print(f"compare: error: {problem}")
        return 2
    launch = Launch(args.data_dir, args.eval_splits, args.real_labels)
    common = ["--data_dir", args.data_dir, *extra]
    common += ["--allow_changes"] if args.allow_changes else []
    runs = run_specs(args.arms, args.seeds, args.seed, out, common)
    clashes = other_flags(runs)
    if clashes and not args.allow_changes:
        print(
            "compare: error: run folders hold runs of other flags than their arms' (a folder "
            f"holds one run): {'; '.join(clashes)}; use another --out, the arms' earlier "
            "flags, or --allow_changes to go on with these (each change is recorded)"
        )
        return 2
    for run in runs:
        if finished(run):
            print(f"compare: {run.directory} has {finished_words(run)}; skipping it")
    gpus = visible_gpus(args.gpus)
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
