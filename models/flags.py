"""Command-line flags, each declared once, and the parser every command of the project uses.

A `Flag` is one flag's declaration: name, type, default, help, choices. A command adds the
flags it takes from their declarations (`FlagParser.add`), so a flag that several commands
share has the same name, default, choices and help in each. `FlagParser`:
- shows flags with underscores, in the seed's spelling (--data_dir, --label_smoothing), and
  accepts hyphens too (--data-dir); a renamed flag keeps working under its older name
  (`aliases`, listed in the help's last line);
- refuses abbreviations (`--ep 3` is not --epochs) and answers an unknown flag, or any other
  mistake, with one line naming the closest known flag, not a page of usage;
- records which flags were given on the command line (`given` after a parse), so that a
  command tells a default from a value given equal to it (a recipe's values, a checkpoint's
  own settings), and refuses a switch given both ways (--tta --no_tta);
- turns a boolean into a pair, --name / --no_name.

It lives in models/ because models imports nothing of the project's while every command needs
it: prep and train import it from here. The model's own flags (the network the trainer builds
and `python -m models` describes) are declared here too; the trainer's other flags are the
fields of train.config.TrainConfig, prep's shared ones are in prep/flags.py.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from models.resnet import STAGE_BLOCKS, VARIANTS

GIVEN = "_given_flags"  # the namespace attribute the actions record given flags in


@dataclass(frozen=True)
class Flag:
    """One flag: --name VALUE (converted by `type`), or for type bool the pair --name /
    --no_name. A default of None means "decided later" (the help says by what)."""

    name: str
    type: Callable  # bool, int, float, str or a converting function
    default: object
    help: str
    choices: tuple | None = None
    metavar: str | None = None
    required: bool = False
    repeated: bool = False  # may be given several times: the values in a list

    @property
    def spellings(self) -> tuple[str, ...]:
        if self.type is bool:
            return (f"--{self.name}", f"--no_{self.name}")
        return (f"--{self.name}",)


def mark_given(namespace: argparse.Namespace, dest: str, value) -> None:
    """Record that `dest` was given, and with which value (a flag given twice is told)."""
    given = getattr(namespace, GIVEN, None)
    if given is None:
        given = {}
        setattr(namespace, GIVEN, given)
    given.setdefault(dest, []).append(value)


class StoreValue(argparse.Action):
    """--name VALUE, recorded as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        mark_given(namespace, self.dest, values)


class AppendValue(argparse.Action):
    """--name VALUE, repeatable: the values in a list, recorded as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(given or []), values])
        mark_given(namespace, self.dest, None)  # repeatable: every value is kept


class Switch(argparse.Action):
    """--name turns it on, --no_name off; recorded as given."""

    def __init__(self, option_strings, dest, default=None, help=None, **_):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        on = option_string != self.option_strings[-1]
        setattr(namespace, self.dest, on)
        mark_given(namespace, self.dest, on)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: argparse's "(default: X)", unless the help text already says
    what the default is ("(default..."), the default is None (decided later, the help says
    how) or the flag is a switch (the help says what on means; off is the other spelling)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action, Switch) or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def underscored(token: str, aliases: dict[str, str]) -> str:
    """--shard-size=4 -> --shard_size=4; an older name -> its new one; other tokens as given."""
    if not token.startswith("--") or token == "--":
        return token
    name, sep, value = token.partition("=")
    name = "--" + name[2:].replace("-", "_")
    return aliases.get(name, name) + sep + value


def closest(name: str, known: list[str]) -> str | None:
    """The known flag `name` most likely meant: one it abbreviates, else the most similar."""
    longer = sorted(k for k in known if k.startswith(name))
    if longer:
        return longer[0]
    similar = difflib.get_close_matches(name, [k for k in known if k != "--help"], 1, 0.7)
    return similar[0] if similar else None


class FlagParser(argparse.ArgumentParser):
    def __init__(
        self,
        *args,
        aliases: dict[str, str] | None = None,
        retired: dict[str, str] | None = None,
        **kwargs,
    ) -> None:
        """`aliases`: older flag -> its new name (both with underscores), still accepted.
        `retired`: a flag no longer taken here -> what to say instead when it is given."""
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        self.aliases = dict(aliases or {})
        self.retired = dict(retired or {})
        if self.aliases:
            old = ", ".join(f"{a} for {n}" for a, n in self.aliases.items())
            epilog = kwargs.get("epilog")
            kwargs["epilog"] = (
                epilog + " " if epilog else ""
            ) + f"Older names still accepted: {old}."
        super().__init__(*args, **kwargs)
        self.flags: dict[str, Flag] = {}  # name -> declaration, in the order added
        self.given: frozenset[str] = frozenset()  # the flags of the last parse's command line
        # A switch given both ways (--tta --no_tta) is an error at once, unless the command
        # reports it with its other problems (the trainer). A flag with a value given twice
        # takes the last, as argparse does: wrappers (make train ARGS=...) rely on it.
        self.contradictions: list[str] = []
        self.report_contradictions_later = False

    def add(self, *flags: Flag, group=None) -> None:
        """Add flags from their declarations (to `group`, an argument group of this parser,
        when given)."""
        target = group or self
        for flag in flags:
            if flag.name in self.flags:
                raise ValueError(f"--{flag.name} is added twice to {self.prog}")
            self.flags[flag.name] = flag
            help = flag.help.replace("%", "%%")  # argparse formats help strings with %
            if flag.type is bool:
                target.add_argument(
                    *flag.spellings, dest=flag.name, action=Switch, default=flag.default,
                    help=help,
                )  # fmt: skip
            else:
                metavar = flag.metavar
                if metavar is None and flag.choices is None:
                    metavar = {int: "N", float: "X"}.get(flag.type)
                target.add_argument(
                    *flag.spellings, dest=flag.name, type=flag.type,
                    action=AppendValue if flag.repeated else StoreValue,
                    default=flag.default, choices=flag.choices, metavar=metavar, help=help,
                    required=flag.required,
                )  # fmt: skip

    def normalised(self, args) -> tuple[list[str], int]:
        """The arguments with flags spelt as defined, and where the flags end (at `--`)."""
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)  # after --: positionals only
        return [underscored(a, self.aliases) for a in args[:end]] + args[end:], end

    def parse_known_args(self, args=None, namespace=None):
        args, end = self.normalised(args)
        for token in args[:end]:
            name = token.partition("=")[0]
            if name in self.retired and name not in self.flags:
                self.error(f"{name}: {self.retired[name]}")
        parsed, extras = super().parse_known_args(args, namespace)
        given = vars(parsed).pop(GIVEN, {})
        self.given = frozenset(given)
        self.contradictions = [
            f"--{dest} and --no_{dest} are both given"
            for dest, values in given.items()
            if self.flags[dest].type is bool and len(set(values)) > 1
        ]
        if self.contradictions and not self.report_contradictions_later:
            self.error(self.contradictions[0])
        return parsed, extras

    def parse_args(self, args=None, namespace=None):
        """All the arguments, or one line on the first that nothing here takes (before any
        other mistake, such as a missing required flag: a typo is the likelier cause)."""
        args, end = self.normalised(args)
        known = set(self.known_flags())
        for token in args[:end]:
            if token.startswith("--") and token.partition("=")[0] not in known | set(self.retired):
                self.error(self.unknown(token))
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown(extras[0]))
        return parsed

    def known_flags(self) -> list[str]:
        return ["--help"] + [s for flag in self.flags.values() for s in flag.spellings]

    def unknown(self, token: str) -> str:
        """One line on an argument nothing here takes, naming the closest known flag."""
        if not token.startswith("-"):
            return f"unexpected argument {token!r}"
        name = token.partition("=")[0]
        guess = closest(name, self.known_flags())
        return f"unknown flag {name}" + (f" (did you mean {guess}?)" if guess else "")

    def error(self, message: str):
        """One line, without the usage: what is wrong, and where the flags are listed."""
        self.exit(2, f"{self.prog}: error: {message}; {self.prog} --help lists every flag\n")


# The model's flags: the network the trainer builds and `python -m models` describes.
DEPTH = Flag("depth", int, 50, "ResNet depth", choices=tuple(sorted(STAGE_BLOCKS)))
VARIANT = Flag(
    "variant",
    str,
    "preact",
    "preact: full pre-activation bottlenecks; v1.5: torchvision's ResNet, its parameter names "
    "and function",
    choices=VARIANTS,
)
SD = Flag("sd", int, 0, "stochastic depth: 1 on, 0 off", choices=(0, 1))
SD_MODE = Flag(
    "sd_mode",
    str,
    "batch",
    "with --sd 1: batch, the paper's method, one draw per block per step and dropped blocks "
    "not computed (faster); sample: per-sample drop path (every block computed)",
    choices=("batch", "sample"),
)
PL = Flag("pL", float, 0.5, "with --sd 1: the survival probability of the last block, in (0, 1]")
BLURPOOL = Flag(
    "blurpool",
    bool,
    False,
    "FFCV's BlurPool: a fixed 3x3 binomial low-pass filter before every strided convolution "
    "with 16 input channels or more (parameter-free: the state_dict keys are torchvision's, "
    "the function is not)",
)
IMAGE_SIZE = Flag(
    "image_size",
    int,
    224,
    "the training crop's side in pixels (without --min_res), the default --val_res, and the "
    "input size python -m models counts FLOPs at",
)
NUM_CLASSES = Flag("num_classes", int, 1000, "classifier outputs (the trainer: the shards')")
MODEL_FLAGS = (DEPTH, VARIANT, SD, SD_MODE, PL, BLURPOOL, IMAGE_SIZE)
