"""python -m train.report RUN_DIR [RUN_DIR ...]: the comparison table, plot and statistics
of finished runs (train.comparison_report): comparison.csv, comparison.md, comparison.json
and comparison.png beside them, as train.compare writes them for its own runs.
"""

from __future__ import annotations

from pathlib import Path

from prep.flags import FlagParser
from train.comparison_report import ReportError, write_report


def main(argv: list[str] | None = None) -> int:
    p = FlagParser(prog="python -m train.report", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with training_summary.json)")
    p.add_argument("--out", help="where to write comparison.* (default: the first run's parent)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]).resolve().parent
    names = [Path(r).resolve().name for r in args.runs]
    try:
        if len(set(names)) != len(names):
            raise ReportError(f"two runs share a folder name ({', '.join(names)}): rename one")
        table = write_report({n: [Path(r)] for n, r in zip(names, args.runs, strict=True)}, out)
    except ReportError as e:
        print(f"report: error: {e}")
        return 2
    print(table + f"\nwrote {out / 'comparison.csv'}, comparison.md, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
