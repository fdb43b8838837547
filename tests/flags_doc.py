"""docs/flags.md: every flag of every command, generated from the commands' parsers.

`make docs` runs this module (python -m tests.flags_doc) to write the page, and
tests/test_flags.py fails when the page differs from what it would write. It lives in tests/
because it imports every entry point's parser, which no module of models/, prep/ or train/
may do (entry points are run, not imported).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.__main__ import build_parser as models_parser
from models.flags import Flag, FlagParser
from prep.__main__ import build_parser as prep_parser
from prep.__main__ import eval_set_parser, verify_parser
from prep.bench import build_parser as prep_bench_parser
from train.bench import checkpoint as bench_checkpoint
from train.bench import input as bench_input
from train.bench import train as bench_train
from train.compare.__main__ import build_parser as compare_parser
from train.config import build_parser as train_parser
from train.demo import build_parser as demo_parser
from train.evaluate import build_parser as evaluate_parser
from train.export import build_parser as export_parser
from train.predict import build_parser as predict_parser
from train.report import build_parser as report_parser

PAGE = Path(__file__).resolve().parents[1] / "docs" / "flags.md"
# Every command, in the order of the workflow, and the function that builds its parser.
COMMANDS = {
    "python -m prep": prep_parser,
    "python -m prep verify": verify_parser,
    "python -m prep eval_set": eval_set_parser,
    "python -m train": train_parser,
    "python -m train.evaluate": evaluate_parser,
    "python -m train.compare": compare_parser,
    "python -m train.report": report_parser,
    "python -m train.export": export_parser,
    "python -m train.predict": predict_parser,
    "python -m train.demo": demo_parser,
    "python -m models": models_parser,
    "python -m train.bench input": bench_input.build_parser,
    "python -m train.bench train": bench_train.build_parser,
    "python -m train.bench checkpoint": bench_checkpoint.build_parser,
    "python -m prep.bench": prep_bench_parser,
}
HEADER = """# Every flag of every command

Generated from the commands' parsers by `make docs` (tests/flags_doc.py); a test fails when
this page is stale. Flags are shown with underscores; hyphens work too (`--label-smoothing`),
and abbreviations do not (`--ep` is refused, naming `--epochs`). A flag that several commands
take is declared once and has the same default, choices and meaning in each (`--out` is each
command's own output folder). A boolean flag comes as a pair, `--name` / `--no_name`; its
default column says which holds when neither is given.
"""


def spelling(flag: Flag) -> str:
    if flag.type is bool:
        return f"`--{flag.name}`, `--no_{flag.name}`"
    if flag.choices:
        return f"`--{flag.name} {{{','.join(str(c) for c in flag.choices)}}}`"
    metavar = flag.metavar or {int: "N", float: "X"}.get(flag.type) or flag.name.upper()
    return f"`--{flag.name} {metavar}`"


def default_words(flag: Flag) -> str:
    if flag.required:
        return "required"
    if flag.type is bool:
        return {True: "on", False: "off"}.get(flag.default, "see meaning")
    if flag.default is None:
        return "see meaning" if "(default" in flag.help else "none"
    return f"`{flag.default}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def positionals(parser: FlagParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings]


def section(command: str, parser: FlagParser) -> str:
    lines = [f"## `{command}`", ""]
    if parser.description:
        lines += [cell(parser.description), ""]
    for action in positionals(parser):
        name = action.metavar or action.dest.upper()
        lines.append(f"- `{name}`: {cell(action.help or '')}")
    if positionals(parser):
        lines.append("")
    lines += ["| flag | default | meaning |", "|---|---|---|"]
    for flag in parser.flags.values():
        lines.append(f"| {spelling(flag)} | {default_words(flag)} | {cell(flag.help)} |")
    if parser.aliases:
        older = ", ".join(f"`{old}` for `{new}`" for old, new in parser.aliases.items())
        lines += ["", f"Older names still accepted: {older}."]
    return "\n".join(lines) + "\n"


def render() -> str:
    return HEADER + "".join("\n" + section(command, build()) for command, build in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(Path.cwd()) if PAGE.is_relative_to(Path.cwd()) else PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
