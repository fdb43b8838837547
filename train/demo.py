"""python -m train.demo (make demo): the whole product end to end on a small real data set.

scikit-learn's handwritten digits become an ImageNet-style folder tree (prep.digits), prep
turns it into shards, and train.compare (run as a process) trains the baseline and the
stochastic-depth ResNet-50 at 32x32 (on the GPU when there is one, else the CPU) and prints
the comparison.
A few minutes on a CPU (docs/results.md has the measured times). Rerunning continues or skips
what is done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.flags import Flag, FlagParser
from prep.build import PrepOptions, build
from prep.digits import write_digits
from prep.flags import PROCESSES
from train.config import train_flags
from train.data import DaliMissing, require_dali

TARGET_TOP1 = 0.90
# Digits are 32x32 and centred: milder crops than ImageNet's, and no flips (a mirrored 3 is
# no digit). Ten epochs of one-epoch warmup and cosine decay reach about 98% on the CPU.
TRAIN_FLAGS = [
    "--depth", "50", "--epochs", "10", "--image_size", "32", "--batch", "64",
    "--warmup_epochs", "1", "--crop_area_min", "0.35", "--no_flip", "--no_color_jitter",
    "--log_every", "10",
]  # fmt: skip


OUT = Flag("out", str, "results/demo", "where the data, the shards and the runs go")


def build_parser() -> FlagParser:
    p = FlagParser(prog="python -m train.demo", description=__doc__.split("\n")[0])
    p.add(OUT, train_flags()["workers"], PROCESSES)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_dali()
    except DaliMissing as e:
        print(f"python -m train.demo: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    data, shards, runs = out / "data", out / "shards", out / "compare"
    if not (data / "val").is_dir():
        counts = write_digits(data)
        print(f"demo: wrote {counts['train']} train and {counts['val']} val digit images to {data}")
    build(data, shards, PrepOptions(), workers=args.processes)
    # train.compare in a process of its own: an entry point is run, not imported
    compare = [sys.executable, "-m", "train.compare", "--data_dir", str(shards), "--out"]
    workers = ["--workers", str(args.workers)] if args.workers else []
    try:
        code = subprocess.run([*compare, str(runs), *workers, *TRAIN_FLAGS]).returncode
    except KeyboardInterrupt:  # compare and its trainers got the Ctrl-C too, and saved
        print("demo: interrupted; rerun make demo to continue")
        return 130
    if code != 0:
        return code
    tops = {
        name: json.loads((runs / name / "training_summary.json").read_text())["final_top1"]
        for name in ("baseline", "sd")
    }
    for test in json.loads((runs / "comparison.json").read_text())["paired"]:
        print(f"demo: {test['verdict']}")
    verdict = "reached" if min(tops.values()) >= TARGET_TOP1 else "MISSED"
    print(
        f"demo: final val top-1: baseline {100 * tops['baseline']:.1f}%, stochastic depth "
        f"{100 * tops['sd']:.1f}% ({verdict} the demo's target of {100 * TARGET_TOP1:.0f}%); "
        f"see {runs}/comparison.md and comparison.png"
    )
    return 0 if verdict == "reached" else 1


if __name__ == "__main__":
    raise SystemExit(main())
