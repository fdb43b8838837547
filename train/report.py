"""python -m train.report RUN_DIR [RUN_DIR ...]: the comparison table, plot and statistics
of finished runs.

Writes comparison.csv, comparison.md, comparison.json and comparison.png (val top-1 and train
loss per epoch, every run on the same axes; the seeds of an arm faintly, their mean bold).
With two runs, the second minus the first is reported too (train.compare puts the reference
first). Where the runs' per-image val logits are there (train.compare writes them), every arm
is tested against the first on the same images (train.stats), and with several seeds per arm
the seeds' spread is reported too. The plot is drawn with Pillow, which the project already
needs, rather than another plotting dependency.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from train import verdicts
from train.logs import csv_text, write_atomic

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
]
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


class ReportError(Exception):
    pass


def read_run(run_dir: Path, label: str) -> dict:
    """A run's summary and history, from the files the trainer writes."""
    summary_path, history_path = run_dir / "training_summary.json", run_dir / "training_history.csv"
    if not summary_path.is_file() or not history_path.is_file():
        raise ReportError(f"{run_dir} holds no training_summary.json and training_history.csv")
    summary = json.loads(summary_path.read_text())
    with open(history_path) as f:
        history = [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    best = next((r for r in history if r["epoch"] == summary["best_epoch"]), None)
    return {
        "run": label,
        "best_top1": summary["best_top1"],
        "best_top5": summary.get("best_top5", best["val_top5"] if best else None),
        "best_epoch": summary["best_epoch"],
        "final_top1": summary["final_top1"],
        "final_top5": summary["final_top5"],
        "epochs": summary["epochs_completed"],
        "wall_seconds": summary["total_seconds"],
        "images_per_second": summary["mean_images_per_second"],
        "history": history,
    }


def difference(a: dict, b: dict) -> dict:
    """b minus a, for the numeric columns."""
    row = {"run": f"{b['run']} - {a['run']}"}
    for k in COLUMNS[1:]:
        if k != "best_epoch" and a[k] is not None and b[k] is not None:
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


def cells(r: dict, signed: bool) -> list[str]:
    """One table row; signed for the difference row (which has no epochs or best epoch)."""

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
    ]


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
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(cells(r, signed=False)) + " |" for r in rows]
    if diff:
        lines.append("| " + " | ".join(cells(diff, signed=True)) + " |")
    return "\n".join(lines) + "\n"


def draw_panel(draw, box, series: list[tuple], title: str, font) -> None:
    """One line chart in box (x0, y0, x1, y1): series of (name, xs, ys, colour, faint); a
    faint series is drawn thin and pale, without a legend entry."""
    x0, y0, x1, y1 = box
    left, bottom = x0 + 60, y1 - 40
    top, right = y0 + 30, x1 - 10
    draw.text((x0 + 60, y0 + 5), title, fill="black", font=font)
    points = [
        (x, y) for _, xs, ys, *_ in series for x, y in zip(xs, ys, strict=True) if y is not None
    ]
    if not points:
        draw.text((left + 10, top + 10), "no data", fill="black", font=font)
        return
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax, ymin = ymax + 0.5, ymin - 0.5
    pad = 0.05 * (ymax - ymin)
    ymin, ymax = ymin - pad, ymax + pad

    def to_px(x, y):
        return (
            left + (x - xmin) / (xmax - xmin) * (right - left),
            bottom - (y - ymin) / (ymax - ymin) * (bottom - top),
        )

    draw.rectangle((left, top, right, bottom), outline="black")
    for i in range(5):  # y ticks
        value = ymin + i * (ymax - ymin) / 4
        _, py = to_px(xmin, value)
        draw.line((left - 4, py, left, py), fill="black")
        draw.line((left, py, right, py), fill=(225, 225, 225))
        draw.text((x0 + 2, py - 7), f"{value:.3g}", fill="black", font=font)
    for i in range(5):  # x ticks
        value = xmin + i * (xmax - xmin) / 4
        px, _ = to_px(value, ymin)
        draw.line((px, bottom, px, bottom + 4), fill="black")
        draw.text((px - 8, bottom + 6), f"{value:.3g}", fill="black", font=font)
    draw.text(((left + right) / 2 - 15, bottom + 22), "epoch", fill="black", font=font)
    legend = 0
    for name, xs, ys, colour, faint in sorted(series, key=lambda s: not s[4]):  # faint first
        line = [to_px(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        pale = tuple(c + (255 - c) * 3 // 5 for c in colour)
        if len(line) > 1:
            draw.line(line, fill=pale if faint else colour, width=1 if faint else 2)
        if faint:
            continue
        for px, py in line:
            draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colour)
        y = top + 12 + 16 * legend
        draw.line((right - 150, y, right - 130, y), fill=colour, width=3)
        draw.text((right - 125, y - 7), name, fill="black", font=font)
        legend += 1


def speed_ratios(arms: dict[str, list[dict]]) -> str:
    """Each arm's wall time and images/s against the first arm's (means over seeds)."""

    def mean(runs: list[dict], key: str) -> float | None:
        values = [r[key] for r in runs if r[key]]
        return sum(values) / len(values) if values else None

    names = list(arms)
    lines = []
    for name in names[1:]:
        pairs = [(mean(arms[name], k), mean(arms[names[0]], k)) for k in COLUMNS[-2:]]
        if all(a and b for a, b in pairs):
            (wall, wall_ref), (speed, speed_ref) = pairs
            lines.append(
                f"- {name} / {names[0]}: wall time {wall / wall_ref:.2f}x, "
                f"images/s {speed / speed_ref:.2f}x"
            )
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def curves(arms: dict[str, list[dict]], key: str, scale: float) -> list[tuple]:
    """Plot series of one history column: every arm in its colour; with several seeds each
    seed faintly and their mean (over the epochs all of them have) in full."""
    series = []
    for k, (name, runs) in enumerate(arms.items()):
        colour = COLOURS[k % len(COLOURS)]
        lines = [
            {h["epoch"]: None if h[key] is None else scale * h[key] for h in r["history"]}
            for r in runs
        ]
        if len(runs) == 1:
            series.append((name, list(lines[0]), list(lines[0].values()), colour, False))
            continue
        for line in lines:
            series.append((None, list(line), list(line.values()), colour, True))
        shared = sorted(
            set.intersection(*(set(e for e, v in ln.items() if v is not None) for ln in lines))
        )
        mean = [sum(ln[e] for ln in lines) / len(lines) for e in shared]
        series.append((f"{name} (mean of {len(runs)})", shared, mean, colour, False))
    return series


def plot(arms: dict[str, list[dict]], path: Path) -> None:
    image = Image.new("RGB", (1200, 460), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw_panel(draw, (0, 0, 600, 460), curves(arms, "val_top1", 100), "val top-1 (%)", font)
    draw_panel(draw, (600, 0, 1200, 460), curves(arms, "train_loss", 1), "train loss", font)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def report(groups: dict[str, list[Path]], out: Path) -> str:
    """Write comparison.csv, .md, .json and .png into out for the runs of each arm (the first
    arm is the reference); return the markdown."""
    arms = {
        name: [read_run(Path(d), verdicts.run_label(name, Path(d))) for d in dirs]
        for name, dirs in groups.items()
    }
    runs = [r for rs in arms.values() for r in rs]
    diff = difference(runs[0], runs[1]) if len(runs) == 2 else None
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: r[k] for k in COLUMNS} for r in runs] + ([diff] if diff else [])
    write_atomic(out / "comparison.csv", csv_text(rows, COLUMNS))
    try:
        tests = verdicts.paired_tests(groups)
        seeds = verdicts.seed_summary(groups)
    except verdicts.DifferentImages as e:
        raise ReportError(str(e)) from None
    text = markdown(runs, diff) + speed_ratios(arms)
    text += verdicts.markdown(tests, seeds, evaluated=bool(tests or seeds))
    write_atomic(out / "comparison.md", text)
    record = {"runs": rows, "paired": tests, "seeds": seeds}
    write_atomic(out / "comparison.json", json.dumps(record, indent=1) + "\n")
    plot(arms, out / "comparison.png")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with training_summary.json)")
    p.add_argument("--out", help="where to write comparison.* (default: the first run's parent)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]).resolve().parent
    names = [Path(r).resolve().name for r in args.runs]
    try:
        if len(set(names)) != len(names):
            raise ReportError(f"two runs share a folder name ({', '.join(names)}): rename one")
        table = report({n: [Path(r)] for n, r in zip(names, args.runs, strict=True)}, out)
    except ReportError as e:
        print(f"report: error: {e}")
        return 2
    print(table + f"\nwrote {out / 'comparison.csv'}, comparison.md, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
