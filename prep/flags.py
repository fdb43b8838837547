"""The command lines of prep/ and train/: one parser class, so that every entry point spells
its flags the same way. Flags are defined and shown in --help with underscores, in the seed's
spelling (--data_dir, --label_smoothing); each is also accepted with hyphens (--data-dir), and
a flag that was renamed keeps working under its old name (`aliases`, listed in the help's
last lines). Each default is shown once: by argparse, unless the help text already says it.
(models/ imports nothing of ours: `python -m models` spells its few aliases out itself.)"""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, unless the help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS):
            return text
        if isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def underscored(token: str, aliases: dict[str, str]) -> str:
    """--shard-size=4 -> --shard_size=4; an old name -> its new one; other tokens as given."""
    if not token.startswith("--") or token == "--":
        return token
    name, sep, value = token.partition("=")
    name = "--" + name[2:].replace("-", "_")
    return aliases.get(name, name) + sep + value


class FlagParser(argparse.ArgumentParser):
    def __init__(self, *args, aliases: dict[str, str] | None = None, **kwargs) -> None:
        """`aliases`: old flag -> its new name (both with underscores)."""
        kwargs.setdefault("formatter_class", HelpFormatter)
        self.aliases = dict(aliases or {})
        if self.aliases:
            old = ", ".join(f"{a} for {n}" for a, n in self.aliases.items())
            epilog = kwargs.get("epilog")
            kwargs["epilog"] = (
                epilog + " " if epilog else ""
            ) + f"Older names still accepted: {old}."
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        end = args.index("--") if "--" in args else len(args)  # after --: positionals only
        args = [underscored(a, self.aliases) for a in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)
