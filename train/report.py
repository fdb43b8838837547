"""python -m train.report RUN_DIR [RUN_DIR ...]: the comparison table, plot and statistics
of finished runs (train.compare.report): comparison.csv, comparison.md, comparison.json
and comparison.png beside them, as train.compare writes them for its own runs.
"""

from __future__ import annotations

from pathlib import Path

from models.flags import Flag, FlagParser
from train.compare.report import ReportError, write_report

OUT = Flag("out", str, None, "where to write comparison.* (default: the first run's parent)")


def build_parser() -> FlagParser:
    p = FlagParser(prog="python -m train.report", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (each with training_summary.json)")
    p.add(OUT)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
