"""The comparison of finished runs: comparison.csv, comparison.md, comparison.json and
comparison.png from each run's training_summary.json and training_history.csv. With two runs,
the second minus the first is reported too (the first arm is the reference). Where the runs'
per-image val logits are there (train.compare writes them), every arm is tested against the
first on the same images (train.compare.verdicts), on val and on each set beyond it the runs were
evaluated on (compare --eval_splits, --real_labels), and with several seeds per arm the seeds'
spread is reported too. What train.report and train.compare both print."""

from __future__ import annotations

import json
from pathlib import Path

from prep.atomic import write_atomic
from train.compare import verdicts
from train.compare.plot import plot
from train.compare.tables import (
    COLUMNS,
    ReportError,
    difference,
    markdown,
    read_run,
    speed_ratios,
)
from train.logs import csv_text, recorded_config


def write_report(groups: dict[str, list[Path]], out: Path) -> str:
    """Write comparison.csv, .md, .json and .png into out for the runs of each arm (the first
    arm is the reference); return the markdown."""
    arms = {
        name: [read_run(Path(d), verdicts.run_label(name, Path(d))) for d in dirs]
        for name, dirs in groups.items()
    }
    runs = [r for rs in arms.values() for r in rs]
    run_dirs = [d for dirs in groups.values() for d in dirs]
    diff = difference(runs[0], runs[1]) if len(runs) == 2 else None
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: r[k] for k in COLUMNS} for r in runs] + ([diff] if diff else [])
    write_atomic(out / "comparison.csv", csv_text(rows, COLUMNS))
    try:
        sets = verdicts.evaluation_sets(groups)
        tests = verdicts.paired_tests(groups)
        tests += [t for where in sets for t in verdicts.paired_tests(groups, where)]
        seeds = verdicts.seed_summary(groups)
    except verdicts.DifferentImages as e:
        raise ReportError(str(e)) from None
    accuracies = verdicts.set_accuracies(groups, sets) if sets else None
    text = markdown(runs, diff) + speed_ratios(arms)
    text += verdicts.markdown(tests, seeds, evaluated=bool(tests or seeds))
    text += verdicts.sets_markdown(accuracies or {}, sets)
    write_atomic(out / "comparison.md", text)
    configs = {r["run"]: recorded_config(Path(d)) for r, d in zip(runs, run_dirs, strict=True)}
    record = {"runs": rows, "configs": configs, "paired": tests, "seeds": seeds}
    record["sets"] = accuracies
    write_atomic(out / "comparison.json", json.dumps(record, indent=1) + "\n")
    plot(arms, out / "comparison.png")
    return text
