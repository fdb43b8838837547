"""The comparison's tables: each run's row (best and final top-1/top-5, epochs, wall time,
images/s, the time to --target_top1) read from the files the trainer writes, the second
minus the first with two runs, the markdown table, and each arm's speed against the
first's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = [
    "run",
    "best_top1",
    "best_top5",
    "best_epoch",
    "final_top1",
    "final_top5",
    "epochs",
    "wall_seconds",
    "images_per_second",
    "target_epoch",  # --target_top1: the first epoch at it, and the run's time to it
    "time_to_target_s",
]
SPEED = ("wall_seconds", "images_per_second")


class ReportError(Exception):
    """Runs that cannot be reported together (missing files, other val images)."""


# A run's row: the summary keys each column comes from (training_summary.json).
SUMMARY_KEYS = {
    "best_top1": "best_top1",
    "best_top5": "best_top5",
    "best_epoch": "best_epoch",
    "final_top1": "final_top1",
    "final_top5": "final_top5",
    "epochs": "epochs_completed",
    "wall_seconds": "total_seconds",
    "images_per_second": "mean_images_per_second",
    "target_top1": "target_top1",
    "target_epoch": "target_epoch",
    "time_to_target_s": "time_to_target_s",
}


def read_run(run_dir: Path, label: str) -> dict:
    """A run's summary and history, from the files the trainer writes."""
    summary_path, history_path = run_dir / "training_summary.json", run_dir / "training_history.csv"
    if not summary_path.is_file() or not history_path.is_file():
        raise ReportError(f"{run_dir} holds no training_summary.json and training_history.csv")
    summary = json.loads(summary_path.read_text())
    missing = [key for key in SUMMARY_KEYS.values() if key not in summary]
    if missing:
        raise ReportError(
            f"{summary_path} lacks {', '.join(missing)}: it was written by another version of "
            "this project, whose runs cannot be reported with this one's"
        )
    with open(history_path) as f:
        history = [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    row = {column: summary[key] for column, key in SUMMARY_KEYS.items()}
    return {"run": label, **row, "history": history}


def difference(a: dict, b: dict) -> dict:
    """b minus a, for the numeric columns."""
    row = {"run": f"{b['run']} - {a['run']}"}
    for k in COLUMNS[1:]:
        if k not in ("best_epoch", "target_epoch") and a[k] is not None and b[k] is not None:
            row[k] = b[k] - a[k]
    return row


def duration(seconds: float | None, signed: bool = False) -> str:
    if seconds is None:
        return "-"
    sign = ("+" if seconds >= 0 else "-") if signed else ""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.0f} s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.1f} min"
    return f"{sign}{seconds / 3600:.2f} h"


def cells(r: dict, signed: bool, targets: bool) -> list[str]:
    """One table row; signed for the difference row (which has no epochs or best epoch);
    with `targets`, the target epoch and the time to target too."""

    def pct(v):
        return "-" if v is None else format(100 * v, "+.2f" if signed else ".2f")

    ips = r.get("images_per_second")
    return [
        r["run"],
        pct(r.get("best_top1")),
        pct(r.get("best_top5")),
        "" if signed else str(r["best_epoch"] or "-"),
        pct(r.get("final_top1")),
        pct(r.get("final_top5")),
        "" if signed else str(int(r["epochs"])),
        duration(r.get("wall_seconds"), signed),
        "-" if ips is None else format(ips, "+.0f" if signed else ".0f"),
    ] + (
        [
            "" if signed else str(r.get("target_epoch") or "-"),
            duration(r.get("time_to_target_s"), signed),
        ]
        if targets
        else []
    )


def markdown(rows: list[dict], diff: dict | None) -> str:
    header = [
        "run",
        "best top-1 %",
        "best top-5 %",
        "best epoch",
        "final top-1 %",
        "final top-5 %",
        "epochs",
        "wall time",
        "images/s",
    ]
    targets = sorted({r["target_top1"] for r in rows if r.get("target_top1") is not None})
    if targets:
        header += ["target epoch", f"time to {'/'.join(f'{t:g}' for t in targets)}%"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(cells(r, False, bool(targets))) + " |" for r in rows]
    if diff:
        lines.append("| " + " | ".join(cells(diff, True, bool(targets))) + " |")
    return "\n".join(lines) + "\n"


def speed_ratios(arms: dict[str, list[dict]]) -> str:
    """Each arm's wall time and images/s against the first arm's (means over seeds)."""

    def mean(runs: list[dict], key: str) -> float | None:
        values = [r[key] for r in runs if r[key]]
        return sum(values) / len(values) if values else None

    names = list(arms)
    lines = []
    for name in names[1:]:
        pairs = [(mean(arms[name], k), mean(arms[names[0]], k)) for k in SPEED]
        if all(a and b for a, b in pairs):
            (wall, wall_ref), (speed, speed_ref) = pairs
            lines.append(
                f"- {name} / {names[0]}: wall time {wall / wall_ref:.2f}x, "
                f"images/s {speed / speed_ref:.2f}x"
            )
    return "\n" + "\n".join(lines) + "\n" if lines else ""
