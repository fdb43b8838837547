"""One flag vocabulary: every entry point's --help spells its flags with underscores, the
flags they share have one name (and the same choices), each default is shown once, and the
hyphenated and older spellings of a flag still parse to the same values."""

from __future__ import annotations

import re

import pytest

from models import STAGE_BLOCKS
from models.__main__ import parse_args as models_args
from prep.__main__ import build_parser as prep_parser
from prep.__main__ import main as prep_main
from prep.bench import main as prep_bench_main
from train.bench import main as bench_main
from train.bench import parse_args as bench_args
from train.compare import main as compare_main
from train.config import parse_config
from train.demo import main as demo_main
from train.evaluate import main as evaluate_main
from train.evaluate import parse_args as evaluate_args
from train.main import main as train_main
from train.report import main as report_main

ENTRY_POINTS = {
    "python -m train": (train_main, []),
    "train.evaluate": (evaluate_main, []),
    "train.compare": (compare_main, []),
    "train.bench": (bench_main, ["train"]),
    "train.report": (report_main, []),
    "train.demo": (demo_main, []),
    "python -m models": (None, []),
    "python -m prep": (prep_main, []),
    "python -m prep verify": (prep_main, ["verify"]),
    "python -m prep eval_set": (prep_main, ["eval_set"]),
    "prep.bench": (prep_bench_main, []),
}
# The concepts several entry points share, under the one name each has everywhere.
SHARED = (
    "data_dir", "depth", "variant", "sd", "sd_mode", "pL", "image_size", "val_res",
    "no_mixed_precision", "workers", "batch", "device", "seed", "out",
)  # fmt: skip
# Names these concepts had somewhere before, now only accepted as older names.
RETIRED = ("shards", "fp32", "final_survival", "sd_modes_list")


def help_of(entry: str, capsys) -> str:
    main, prefix = ENTRY_POINTS[entry]
    with pytest.raises(SystemExit) as exit_:
        if main is None:
            models_args(["--help"])
        else:
            main([*prefix, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def options(helptext: str) -> dict[str, str]:
    """flag name (without --) -> its help, from argparse's option lines."""
    found, current = {}, None
    for line in helptext.splitlines():
        match = re.match(r"^  (?:-\w, )?--(\S+?)(?:[ ,=]|$)(.*)", line)
        if match:
            current = match.group(1)
            found[current] = match.group(2)
        elif current and line.startswith("      "):
            found[current] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return found


def all_options(capsys) -> dict[str, dict[str, str]]:
    return {entry: options(help_of(entry, capsys)) for entry in ENTRY_POINTS}


def test_every_flag_is_spelt_with_underscores_and_shared_flags_have_one_name(capsys):
    every = all_options(capsys)
    for entry, flags in every.items():
        assert flags, f"{entry}: no flags read from its --help"
        hyphenated = [f for f in flags if "-" in f and f != "help"]
        assert not hyphenated, f"{entry} --help shows {hyphenated}"
        assert not set(flags) & set(RETIRED), f"{entry} --help shows {set(flags) & set(RETIRED)}"
    assert set(every["python -m train"]) >= set(SHARED)  # the trainer has them all
    for name in ("depth", "variant", "workers", "batch", "data_dir"):
        having = [entry for entry, flags in every.items() if name in flags]
        assert len(having) >= 3, (name, having)
    depths = "{" + ",".join(str(d) for d in sorted(STAGE_BLOCKS)) + "}"
    for entry, flags in every.items():
        if "depth" in flags:
            assert depths in flags["depth"] or entry == "python -m train", (entry, flags["depth"])


def test_help_shows_each_default_once(capsys):
    for entry, flags in all_options(capsys).items():
        twice = {f: h for f, h in flags.items() if h.count("default") > 1}
        assert not twice, f"{entry}: {twice}"


def test_hyphens_and_older_names_parse_as_the_flags_they_stand_for():
    assert parse_config(["--label-smoothing", "0.2", "--no-mixed-precision"]) == parse_config(
        ["--label_smoothing", "0.2", "--no_mixed_precision"]
    )
    hyphens = prep_parser().parse_args(
        ["OUT", "--train-tar", "a", "--shard-size=4", "--workers", "3"]
    )
    underscores = prep_parser().parse_args(
        ["OUT", "--train_tar", "a", "--shard_size", "4", "--processes", "3"]
    )
    assert hyphens == underscores and underscores.processes == 3 and underscores.shard_size == 4
    old = evaluate_args(["--weights", "w.pt", "--no-tta", "--image-size", "160", "--data-dir", "s"])
    new = evaluate_args(["--weights", "w.pt", "--no_tta", "--image_size", "160", "--data_dir", "s"])
    assert old == new and new.tta is False and new.image_size == 160
    old = bench_args(["train", "--shards", "s", "--fp32", "--image-size", "64"])
    new = bench_args(["train", "--data_dir", "s", "--no_mixed_precision", "--image_size", "64"])
    assert old == new and new.no_mixed_precision and new.data_dir == "s"
    assert models_args(["--final-survival", "0.7", "--image-size", "96"]) == models_args(
        ["--pL", "0.7", "--image_size", "96"]
    )


def test_sd_means_on_or_off_everywhere(capsys):
    assert bench_args(["train", "--sd", "1", "--sd_mode", "sample"]).sd_modes == ["sample"]
    assert bench_args(["train", "--sd", "0"]).sd_modes == ["off"]
    assert bench_args(["train", "--sd_modes", "off,batch"]).sd_modes == ["off", "batch"]
    with pytest.raises(SystemExit):
        bench_args(["train", "--sd", "off,batch"])
    assert "--sd_modes off,batch,sample" in capsys.readouterr().err
    assert models_args(["--sd", "1"]).sd_mode == "batch"
    assert models_args(["--sd", "1", "--sd_mode", "sample"]).sd_mode == "sample"
    assert models_args([]).sd_mode == "off"
    assert models_args(["--sd-mode", "batch"]).sd_mode == "batch"  # the older command
    with pytest.raises(SystemExit):
        models_args(["--sd", "0", "--sd_mode", "batch"])
    assert parse_config(["--sd", "1", "--sd_mode", "sample"]).sd_mode == "sample"


def test_the_evaluation_batch_is_global_as_the_trainers():
    from train.evaluate import BATCH_PER_PROCESS, Weights, eval_config

    weights = Weights({}, 50, "preact", 10, "state_dict", None)
    args = evaluate_args(["--weights", "w.pt", "--batch", "64"])
    assert eval_config(args, weights, world_size=2).batch == 64
    args = evaluate_args(["--weights", "w.pt"])
    assert eval_config(args, weights, world_size=2).batch == 2 * BATCH_PER_PROCESS
    args = evaluate_args(["--weights", "w.pt", "--image_size", "160"])
    assert eval_config(args, weights, world_size=1).val_res == 160
