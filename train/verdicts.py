"""The statistics section of a comparison report: each run's per-image val correctness (from
the logits train.evaluate wrote), every arm tested against the first on the same images, and
with several seeds per arm the seeds' mean, spread and Welch interval, and which noise is
larger. Returns plain data (comparison.json) and the sentences that say it (comparison.md)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from train.comparison import BEST, FINAL
from train.stats import Seeds, larger_noise, paired, sampling_error, verdict, welch


class DifferentImages(Exception):
    """The runs were evaluated on different val images: no paired test is possible."""


def correctness(directory: Path, which: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(keys, correct) of a run's final or best weights over the val images, or None when
    not evaluated. best falls back to final when best.pt is the last epoch's."""
    path = directory / (BEST if which == "best" else FINAL)
    if which == "best" and not path.is_file():
        path = directory / FINAL
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return saved["keys"], saved["logits"].argmax(1) == saved["labels"]


def paired_tests(groups: dict[str, list[Path]]) -> list[dict]:
    """Every arm's k-th seed against the first arm's k-th seed, final and best weights."""
    names = list(groups)
    reference, tests = names[0], []
    for name in names[1:]:
        for a_dir, b_dir in zip(groups[reference], groups[name], strict=False):
            for which in ("final", "best"):
                if which == "best" and not ((a_dir / BEST).is_file() or (b_dir / BEST).is_file()):
                    continue  # both runs' best weights are their final ones
                a, b = correctness(a_dir, which), correctness(b_dir, which)
                if a is None or b is None:
                    continue
                if not np.array_equal(a[0], b[0]):
                    raise DifferentImages(f"{a_dir} and {b_dir} were evaluated on other val images")
                result = paired(a[1], b[1])
                label_a, label_b = run_label(reference, a_dir), run_label(name, b_dir)
                tests.append(
                    {"weights": which, "a": label_a, "b": label_b, **asdict(result)}
                    | {"verdict": f"{which} weights, {verdict(label_b, label_a, result)}"}
                )
    return tests


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
