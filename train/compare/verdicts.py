"""The statistics section of a comparison report: each run's per-image val correctness (from
the logits train.evaluate wrote), every arm tested against the first on the same images, and
with several seeds per arm the seeds' mean, spread and Welch interval, and which noise is
larger; the same paired tests on each set beyond val that the runs were evaluated on (val's
ReaL labels, evaluation splits such as ImageNetV2). Returns plain data (comparison.json) and
the sentences that say it (comparison.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from train.compare.arms import logits_file
from train.compare.stats import Seeds, larger_noise, paired, sampling_error, verdict, welch
from train.metrics import correct_np


class DifferentImages(Exception):
    """The runs were evaluated on different images: no paired test is possible."""


@dataclass(frozen=True)
class EvalSet:
    """Where the runs were scored: a split's top-1, or val's ReaL top-1 (on the images that
    real.json labels)."""

    split: str = "val"
    real: bool = False

    @property
    def label(self) -> str:
        return f"{self.split} ReaL" if self.real else self.split


VAL = EvalSet()


def correctness(
    directory: Path, which: str, where: EvalSet = VAL
) -> tuple[np.ndarray, np.ndarray] | None:
    """(keys, correct) of a run's final or best weights over the set's images, or None when
    not evaluated. best falls back to final when best.pt is the last epoch's."""
    path = directory / logits_file(where.split, which)
    if which == "best" and not path.is_file():
        path = directory / logits_file(where.split, "final")
    if not path.is_file():
        return None
    with np.load(path) as saved:
        if not where.real:
            return saved["keys"], correct_np(saved["logits"], saved["labels"])
        if "real_correct" not in saved.files:
            return None
        real = saved["real_correct"]
        return saved["keys"][real >= 0], real[real >= 0] == 1


def evaluated_since_training(directory: Path, split: str) -> bool:
    """The run's final logits on the split are there and not older than its last.pt (a run
    trained on after an evaluation of the split has stale ones, which are left out)."""
    logits, weights = directory / logits_file(split, "final"), directory / "last.pt"
    if not logits.is_file():
        return False
    return not weights.is_file() or logits.stat().st_mtime >= weights.stat().st_mtime


def evaluation_sets(groups: dict[str, list[Path]]) -> list[EvalSet]:
    """The sets beyond val that every run was evaluated on: val's ReaL labels, then the
    evaluation splits (their final logits beside every run, since its last training), by
    name."""
    runs = [d for dirs in groups.values() for d in dirs]
    found = []
    if all(correctness(d, "final", EvalSet(real=True)) is not None for d in runs):
        found.append(EvalSet(real=True))
    names = {p.name[: -len("_final.npz")] for p in runs[0].glob("*_final.npz")} - {"val"}
    for name in sorted(names):
        if all(evaluated_since_training(d, name) for d in runs):
            found.append(EvalSet(name))
    return found


def paired_tests(groups: dict[str, list[Path]], where: EvalSet = VAL) -> list[dict]:
    """Every arm's k-th seed against the first arm's k-th seed, final and best weights, on
    the images of `where`."""
    names = list(groups)
    reference, tests = names[0], []
    best = logits_file(where.split, "best")
    prefix = "" if where == VAL else f"{where.label}: "
    for name in names[1:]:
        for a_dir, b_dir in zip(groups[reference], groups[name], strict=False):
            for which in ("final", "best"):
                if which == "best" and not ((a_dir / best).is_file() or (b_dir / best).is_file()):
                    continue  # both runs' best weights are their final ones
                a, b = correctness(a_dir, which, where), correctness(b_dir, which, where)
                if a is None or b is None:
                    continue
                if not np.array_equal(a[0], b[0]):
                    raise DifferentImages(
                        f"{a_dir} and {b_dir} were evaluated on other {where.label} images"
                    )
                result = paired(a[1], b[1])
                label_a, label_b = run_label(reference, a_dir), run_label(name, b_dir)
                tests.append(
                    {"set": where.label, "weights": which, "a": label_a, "b": label_b}
                    | asdict(result)
                    | {"verdict": f"{prefix}{which} weights, {verdict(label_b, label_a, result)}"}
                )
    return tests


def set_accuracies(groups: dict[str, list[Path]], sets: list[EvalSet]) -> dict[str, dict]:
    """Each run's final top-1 (%) on val and on each set beyond it, and the images counted."""
    table = {}
    for name, dirs in groups.items():
        for d in dirs:
            row = {}
            for where in [VAL, *sets]:
                found = correctness(d, "final", where)
                if found is not None:
                    row[where.label] = {
                        "top1": 100 * float(found[1].mean()),
                        "images": len(found[1]),
                    }
            table[run_label(name, d)] = row
    return table


def run_label(arm: str, directory: Path) -> str:
    return arm if directory.name == arm else f"{arm}/{directory.name}"


def seed_summary(groups: dict[str, list[Path]]) -> dict | None:
    """Mean and spread of final and best top-1 per arm over its seeds; Welch against the
    first arm; which noise is larger. None unless every arm has two seeds or more."""
    if min(len(dirs) for dirs in groups.values()) < 2:
        return None
    tops = {which: {} for which in ("final", "best")}
    images = 0
    for name, dirs in groups.items():
        for which in tops:
            found = [correctness(d, which) for d in dirs]
            if any(f is None for f in found):
                return None
            images = len(found[0][1])
            tops[which][name] = Seeds(tuple(100 * float(f[1].mean()) for f in found))
    reference = next(iter(groups))
    arms = {
        name: {
            f"{which}_{stat}": getattr(tops[which][name], stat)
            for which in tops
            for stat in ("mean", "std")
        }
        | {f"{which}_values": list(tops[which][name].values) for which in tops}
        for name in groups
    }
    welch_rows = []
    for name in list(groups)[1:]:
        for which in tops:
            found = welch(tops[which][reference], tops[which][name])
            if found is not None:
                welch_rows.append(
                    {"weights": which, "a": reference, "b": name, "difference": found[0]}
                    | {"low": found[1], "high": found[2]}
                )
    spread = float(np.mean([tops["final"][n].std for n in groups]))
    error = sampling_error(np.mean([tops["final"][n].mean for n in groups]), images)
    return {
        "arms": arms,
        "welch": welch_rows,
        "seed_std": spread,
        "image_error": error,
        "noise": larger_noise(spread, error),
    }


def markdown(tests: list[dict], seeds: dict | None, evaluated: bool) -> str:
    """The 'Is the difference real?' section."""
    lines = ["", "## Is the difference real?", ""]
    if not evaluated:
        return "\n".join(
            lines
            + [
                "No per-image val logits next to the runs (val_final.npz): train.compare "
                "writes them; so does `python -m train.evaluate --logits`.",
                "",
            ]
        )
    lines += [f"- {t['verdict']}" for t in tests]
    if seeds is not None:
        lines += ["", "| arm | final top-1 % (mean ± sd) | best top-1 % (mean ± sd) | seeds |"]
        lines += ["|---|---:|---:|---:|"]
        for name, arm in seeds["arms"].items():
            lines.append(
                f"| {name} | {arm['final_mean']:.2f} ± {arm['final_std']:.2f} | "
                f"{arm['best_mean']:.2f} ± {arm['best_std']:.2f} | {len(arm['final_values'])} |"
            )
        lines.append("")
        lines += [
            f"- {w['weights']} weights, {w['b']} - {w['a']}, difference of the seeds' means: "
            f"{w['difference']:+.2f} points (Welch 95% CI {w['low']:+.2f} to {w['high']:+.2f})"
            for w in seeds["welch"]
        ]
        lines.append(f"- Noise: {seeds['noise']}.")
    return "\n".join(lines) + "\n"


def sets_markdown(accuracies: dict[str, dict], sets: list[EvalSet]) -> str:
    """The runs' final top-1 on val and on each set beyond it, side by side."""
    if not sets:
        return ""
    labels = [VAL.label, *(w.label for w in sets)]
    lines = ["", "## Beyond the val set", ""]
    lines.append("| run | " + " | ".join(f"{label} top-1 %" for label in labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for run, row in accuracies.items():
        values = [f"{row[label]['top1']:.2f}" if label in row else "-" for label in labels]
        lines.append(f"| {run} | " + " | ".join(values) + " |")
    counts = ", ".join(
        f"{label} {next(iter(accuracies.values())).get(label, {}).get('images', 0):,}"
        for label in labels
    )
    lines += [
        "",
        f"Final weights; images: {counts}. A difference that is real on val but not on an "
        "evaluation set (its interval covers 0) may fit val's particular images rather than "
        "the task; ReaL counts a prediction right when raters judged that class correct.",
    ]
    return "\n".join(lines) + "\n"
