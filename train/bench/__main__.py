"""python -m train.bench input|train|checkpoint: the trainer's benchmarks (make bench-input,
make bench-train, make bench-checkpoint), each with its own flags (--help after the name).

input: the DALI train pipeline's images/s against torchvision + PIL in a DataLoader.
train: training images/s with synthetic and with DALI input, per stochastic-depth mode.
checkpoint: seconds to save last.pt as the trainer does, against a bare write.
Each prints its figures and the ratio against its baseline measured in the same run, and
writes them as JSON under benchmarks/runs/ (or to --json FILE).
"""

from __future__ import annotations

import sys

from train.bench import checkpoint, input, train
from train.bench.common import bench_device, bench_shards, write_result
from train.data import DaliMissing, require_dali
from train.shards import ShardsError

BENCHMARKS = {"input": input, "train": train, "checkpoint": checkpoint}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in BENCHMARKS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"python -m train.bench: error: no benchmark {argv[0]!r}", file=sys.stderr)
        print(__doc__.strip())
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    what, flags = argv[0], argv[1:]
    module = BENCHMARKS[what]
    args = module.parse_args(flags)
    device = bench_device(args)
    try:
        if what == "checkpoint":
            result = checkpoint.bench_checkpoint(args, device)
        else:
            require_dali()
            shards = bench_shards(args)
            run = input.bench_input if what == "input" else train.bench_train
            result = run(args, shards, device)
    except (ShardsError, DaliMissing) as e:
        print(f"python -m train.bench {what}: error: {e}", file=sys.stderr)
        return 2
    name = what if what == "input" else f"{what}-rn{args.depth}"
    write_result(result, args.json, name, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
