"""prep's flags that several commands take (make shards, prep verify, prep eval_set, the prep
benchmark, the demo), each declared once; the parser is models.flags.FlagParser, which every
command of the project uses."""

from __future__ import annotations

import argparse

from models.flags import Flag


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


PROCESSES = Flag(
    "processes",
    positive,
    None,
    "worker processes that decode and write images, and walk the train tar (default: every core)",
    metavar="N",
)
SHARD_SIZE = Flag(
    "shard_size",
    positive,
    None,
    "images per shard (default: at most about 1 GB per shard, and 64 or a multiple of 64 "
    "shards where each can hold 256 images or more, to keep all workers busy)",
    metavar="N",
)
STRICT = Flag(
    "strict",
    bool,
    False,
    "fail, listing them all, if any image is undecodable (off: skip them and list them in "
    "manifest.json)",
)
OVERWRITE = Flag(
    "overwrite",
    bool,
    False,
    "replace what an earlier run with other options or images wrote: the shards of OUT (make "
    "shards), the split NAME (eval_set; never train or val)",
)
JSON = Flag(
    "json",
    str,
    None,
    "also write the figures (train.predict: every image's top-k) as JSON to this file (the "
    "benchmarks write theirs under benchmarks/runs/ when it is not given)",
    metavar="FILE",
)
ROUNDS = Flag(
    "rounds",
    positive,
    3,
    "timed rounds, each contender once per round (interleaved); the medians are reported",
    metavar="N",
)
RETIRED = {"--workers": "prep's worker processes are --processes (--workers counts DALI threads)"}
BENCH_RUNS = "benchmarks/runs"  # ignored by git: a benchmark run leaves the tree as it was


def bench_json(given: str | None, name: str) -> str:
    """Where a benchmark writes its JSON: --json, else BENCH_RUNS/NAME.json (the runs that
    docs/benchmarks.md cites are kept in benchmarks/results/, written there with --json)."""
    return given or f"{BENCH_RUNS}/{name}.json"
