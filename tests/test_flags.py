"""One flag vocabulary: every command's flags are declared once (models.flags.Flag), a flag
that several commands take has the same name, default, choices and help in each, --workers
means DALI threads wherever it appears, every parser refuses abbreviations and answers a
mistake in one line naming the closest flag, the trainer's CLI comes from TrainConfig's types
in one parse, and docs/flags.md is what `make docs` would write."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import train.config
from models.__main__ import parse_args as models_args
from prep.__main__ import build_parser as prep_parser
from tests.flags_doc import COMMANDS, PAGE, render
from train.bench.train import parse_args as bench_train_args
from train.config import TrainConfig, parse_config, train_flags
from train.evaluate import Weights, eval_config
from train.evaluate import parse_args as evaluate_args

# Each command's own output folder: the one name that means a different folder in each.
PER_COMMAND = {"out"}


def parsers() -> dict:
    return {command: build() for command, build in COMMANDS.items()}


def test_every_flag_is_declared_once_and_spelt_with_underscores():
    for command, parser in parsers().items():
        declared = {s for flag in parser.flags.values() for s in flag.spellings}
        shown = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
        assert shown == declared, f"{command}: flags added without a declaration"
        assert not [s for s in shown if "-" in s[2:]], f"{command} shows hyphenated flags"


def test_a_flag_several_commands_take_is_the_same_everywhere():
    seen: dict[str, tuple[str, object]] = {}
    shared = set()
    for command, parser in parsers().items():
        for name, flag in parser.flags.items():
            if name in PER_COMMAND:
                continue
            if name in seen:
                first, declaration = seen[name]
                assert flag == declaration, f"--{name} differs between {first} and {command}"
                shared.add(name)
            else:
                seen[name] = (command, flag)
    # the concepts the trainer shares with evaluate, compare, the bench, models, demo
    assert {"data_dir", "depth", "variant", "workers", "batch", "device", "seed"} <= shared
    assert {"sd", "sd_mode", "pL", "blurpool", "image_size", "mixed_precision"} <= shared
    assert {"processes", "json", "real_labels", "rounds"} <= shared


def test_workers_counts_dali_threads_wherever_it_appears(capsys):
    having = [c for c, p in parsers().items() if "workers" in p.flags]
    assert len(having) >= 4 and all(c.startswith("python -m train") for c in having), having
    assert train_flags()["workers"].help.startswith("DALI CPU threads per process")
    with pytest.raises(SystemExit) as exit_:
        prep_parser().parse_args(["OUT", "--workers", "3"])
    assert exit_.value.code == 2
    assert "--processes" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_abbreviations_and_typos_get_one_line_naming_the_closest_flag(command, capsys):
    parser = COMMANDS[command]()
    first = next(iter(parser.flags.values()))
    positionals = ["a", "b", "c"][: len([a for a in parser._actions if not a.option_strings])]
    with pytest.raises(SystemExit) as exit_:  # a prefix of a real flag is no flag
        parser.parse_args([*positionals, f"--{first.name[:-1]}", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"did you mean --{first.name}" in err, err
    assert err.startswith(f"{parser.prog}: error: unknown flag --{first.name[:-1]}")


def test_the_trainers_typo_and_wrong_value_errors_are_one_line(capsys):
    for argv, words in [
        (["--mixupp", "0.2"], "unknown flag --mixupp (did you mean --mixup?)"),
        (["--depth", "34"], "invalid choice: 34"),
        (["--epochs", "ten"], "invalid int value: 'ten'"),
    ]:
        with pytest.raises(SystemExit):
            parse_config(argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_help_shows_each_default_once():
    for command, parser in parsers().items():
        text = parser.format_help()
        for flag in parser.flags.values():
            assert flag.help.count("(default") <= 1, (command, flag.name)
        assert "(default: (default" not in text, command


def test_the_cli_reads_types_not_annotation_strings_and_parses_once(monkeypatch):
    hints = typing.get_type_hints(TrainConfig)
    flags = train_flags()
    for field in dataclasses.fields(TrainConfig):
        if field.name != "dali":
            assert flags[field.name].type is train.config.flag_type(hints[field.name])
    assert flags["lr"].type is float and flags["channels_last"].type is bool
    assert parse_config(["--lr", "0.5"]).lr == 0.5
    assert parse_config([]).channels_last is None  # tri-state: the device decides
    assert parse_config(["--no_channels_last"]).channels_last is False
    built = []
    real = train.config.build_parser
    monkeypatch.setattr(train.config, "build_parser", lambda: built.append(1) or real())
    cfg = parse_config(["--recipe", "accurate", "--epochs", "60", "--ema_halflife", "3"])
    assert len(built) == 1
    assert (cfg.epochs, cfg.ema_halflife, cfg.mixup) == (60, 3.0, 0.2)  # given, given, recipe's
    halflife = parse_config(["--recipe", "accurate", "--epochs", "60"]).ema_halflife
    share = train.config.RECIPES["accurate"].epoch_shares["ema_halflife"]
    assert halflife == pytest.approx(60 * share)


def test_hyphens_and_older_names_parse_as_the_flags_they_stand_for():
    assert parse_config(["--label-smoothing", "0.2", "--no-mixed-precision"]) == parse_config(
        ["--label_smoothing", "0.2", "--no_mixed_precision"]
    )
    hyphens = prep_parser().parse_args(["OUT", "--train-tar", "a", "--shard-size=4", "--seed", "3"])
    underscores = prep_parser().parse_args(
        ["OUT", "--train_tar", "a", "--shard_size", "4", "--shuffle_seed", "3"]
    )
    assert hyphens == underscores and underscores.shuffle_seed == 3
    old = evaluate_args(["--weights", "w.pt", "--no-tta", "--image-size", "160", "--data-dir", "s"])
    new = evaluate_args(["--weights", "w.pt", "--no_tta", "--image_size", "160", "--data_dir", "s"])
    assert vars(old) == vars(new) and new.tta is False and new.image_size == 160
    old = bench_train_args(["--shards", "s", "--fp32", "--image-size", "64"])
    new = bench_train_args(["--data_dir", "s", "--no_mixed_precision", "--image_size", "64"])
    assert old == new and not new.mixed_precision and new.data_dir == "s"
    assert models_args(["--sd", "1", "--final-survival", "0.7"]) == models_args(
        ["--sd", "1", "--pL", "0.7"]
    )


def test_sd_means_on_or_off_everywhere(capsys):
    assert bench_train_args(["--sd", "1", "--sd_mode", "sample"]).sd_modes == ["sample"]
    assert bench_train_args(["--sd", "0"]).sd_modes == ["off"]
    assert bench_train_args(["--sd_modes", "off,batch"]).sd_modes == ["off", "batch"]
    for wrong in (["--sd", "off,batch"], ["--sd", "1", "--sd_modes", "off,batch"]):
        with pytest.raises(SystemExit):
            bench_train_args(wrong)
    assert "--sd_modes" in capsys.readouterr().err
    assert models_args(["--sd", "1"]).sd_mode == "batch"
    assert models_args(["--sd", "1", "--sd_mode", "sample"]).sd_mode == "sample"
    assert models_args([]).sd_mode == "off"
    with pytest.raises(SystemExit):
        models_args(["--sd_mode", "sample"])  # without --sd 1: a contradiction
    assert "add --sd 1" in capsys.readouterr().err
    assert parse_config(["--sd", "1", "--sd_mode", "sample"]).sd_mode == "sample"


def test_the_evaluation_takes_the_trainers_global_batch_and_the_checkpoints_settings():
    weights = Weights({}, 50, "preact", 10, "state_dict", None)
    assert eval_config(evaluate_args(["--weights", "w.pt"]), weights).batch == TrainConfig.batch
    assert eval_config(evaluate_args(["--weights", "w.pt", "--batch", "64"]), weights).batch == 64
    args = evaluate_args(["--weights", "w.pt", "--image_size", "160"])
    assert eval_config(args, weights).val_res == 160
    trained = dataclasses.asdict(TrainConfig(val_res=192, tta=True))
    ours = Weights({}, 50, "preact", 10, "checkpoint", trained)
    kept = eval_config(evaluate_args(["--weights", "w.pt"]), ours)
    assert (kept.val_res, kept.tta) == (192, True)  # not given: as the run evaluated
    given = eval_config(evaluate_args(["--weights", "w.pt", "--no_tta", "--val_res", "224"]), ours)
    assert (given.val_res, given.tta) == (224, False)


def test_docs_flags_page_is_what_make_docs_writes():
    assert PAGE.read_text() == render(), "docs/flags.md is stale: run `make docs`"


def test_contradictory_flags_are_refused_with_the_other_problems(tiny_shards, capsys):
    """A switch given both ways, flags for a feature that is off, a batch larger than the
    train set: refused in the trainer's one message with every other problem, before any
    work; a recipe's own values for such flags do not count. A flag with a value given
    twice takes the last (make train ARGS=... relies on it)."""
    from train.main import main

    argv = ["--data_dir", str(tiny_shards), "--tta", "--no_tta", "--sd", "0", "--pL", "0.3"]
    argv += ["--sd_mode", "sample", "--ema_halflife", "2"]
    assert main([*argv, "--batch", "64", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error: cannot start:")
    for words in (
        "--tta and --no_tta are both given",
        "--pL, --sd_mode would change nothing: stochastic depth is off (--sd 0)",
        "--ema_halflife would change nothing: the EMA is off",
        "--batch 64 is more than the 21 train images",
        "--epochs 0 must be at least 1",
    ):
        assert words in err, (words, err)
    assert parse_config(["--recipe", "accurate"]).pL == 0.95  # the recipe's, with --sd 0: fine
    assert parse_config(["--depth", "50", "--depth", "101"]).depth == 101
    with pytest.raises(train.config.ConfigError, match="--pL would change nothing"):
        parse_config(["--recipe", "accurate", "--pL", "0.9"])
    with pytest.raises(SystemExit):  # other commands refuse it at once, in one line
        models_args(["--blurpool", "--no_blurpool"])
    assert "--blurpool and --no_blurpool are both given" in capsys.readouterr().err
