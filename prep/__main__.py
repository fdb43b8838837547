"""python -m prep DATA OUT [options] | python -m prep verify OUT
| python -m prep eval_set SHARDS NAME SOURCE [options]"""

from __future__ import annotations

import argparse
import os
import sys

from prep.errors import PrepError
from prep.flags import FlagParser

# --workers was prep's name for its worker processes; in train/ it counts DALI threads.
ALIASES = {"--workers": "--processes"}

USAGE = """\
python -m prep DATA OUT [options]     convert ImageNet into shards (make shards)
python -m prep OUT --train_tar ILSVRC2012_img_train.tar --val_tar ILSVRC2012_img_val.tar \\
    [--devkit ILSVRC2012_devkit_t12.tar.gz] [options]
python -m prep verify OUT [--processes N]   check a shards folder (make verify-shards)
python -m prep eval_set SHARDS NAME SOURCE [options]   add an evaluation split (ImageNetV2)"""


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be in 1..100, got {text}")
    return value


def add_strict_flag(p: argparse.ArgumentParser) -> None:
    """--strict, as make shards and eval_set both take it."""
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail, listing them all, if any image is undecodable (default: skip and report)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        prog="python -m prep",
        usage=USAGE,
        aliases=ALIASES,
        description="Convert ImageNet into WebDataset tar shards with DALI index files, "
        "classes.txt and manifest.json, reading the images once, from the downloaded archives "
        "(no extraction) or from extracted folders. DATA, detected automatically: a folder "
        "holding ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
        "ILSVRC2012_devkit_t12.tar.gz as downloaded from image-net.org; Kaggle's "
        "imagenet-object-localization-challenge.zip (or a folder holding it); the folders "
        "DATA/train/<wnid>/ + DATA/val/<wnid>/; the extracted Kaggle download "
        "(DATA/ILSVRC/Data/CLS-LOC/ + DATA/LOC_val_solution.csv); or a flat DATA/val/ with "
        "--val_labels. Resumable: rerun the same command after a crash.",
    )
    p.add_argument(
        "data",
        nargs="?",
        help="the ImageNet downloads' folder, Kaggle's zip, or the extracted folder (DATA); "
        "leave it out with --train_tar and --val_tar",
    )
    p.add_argument("out", help="the shards folder to write (OUT)")
    p.add_argument(
        "--train_tar",
        metavar="FILE",
        help="ILSVRC2012_img_train.tar, where it is (instead of DATA; with --val_tar)",
    )
    p.add_argument(
        "--val_tar",
        metavar="FILE",
        help="ILSVRC2012_img_val.tar, where it is (instead of DATA; with --train_tar)",
    )
    p.add_argument(
        "--devkit",
        metavar="FILE",
        help="ILSVRC2012_devkit_t12.tar.gz, the val tar's labels (default: the one beside "
        "the val tar)",
    )
    p.add_argument(
        "--val_labels",
        metavar="FILE",
        help="labels of a flat val folder or of the val tar: lines `filename wnid` (or "
        "Kaggle's LOC_val_solution.csv)",
    )
    p.add_argument(
        "--shard_size",
        type=positive,
        metavar="N",
        help="images per shard (default: at most about 1 GB per shard, and 64 or a multiple "
        "of 64 shards where each can hold 256 images or more, to keep all workers busy)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the global train shuffle")
    p.add_argument(
        "--max_side",
        type=positive,
        metavar="N",
        help="downscale images whose longer side exceeds N pixels (faster decoding later; "
        "default: keep every image as it is)",
    )
    p.add_argument(
        "--quality",
        type=quality,
        default=95,
        metavar="Q",
        help="JPEG quality of re-encoded images, repaired or downscaled",
    )
    p.add_argument(
        "--processes",
        type=positive,
        default=os.cpu_count(),
        metavar="N",
        help=f"worker processes, for walking the train tar too (default: all cores, "
        f"{os.cpu_count()} here)",
    )
    add_strict_flag(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the shards of an earlier run with other options in OUT",
    )
    return p


def verify_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        prog="python -m prep verify",
        aliases=ALIASES,
        description="Check manifest against tars against indexes: counts, sizes, sha256, "
        "labels in range. Exits non-zero naming the first problem.",
    )
    p.add_argument("out", help="the shards folder")
    p.add_argument(
        "--processes", type=positive, default=os.cpu_count(), metavar="N", help="worker processes"
    )
    return p


def eval_set_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        prog="python -m prep eval_set",
        aliases=ALIASES,
        description="Add an evaluation split NAME (NAME-000000.tar ... with DALI indexes) to "
        "a finished shards folder SHARDS, beside train and val, labelled with its classes.txt; "
        "evaluate it with `python -m train.evaluate --split NAME`. SOURCE: ImageNetV2's "
        "tar.gz as downloaded (read in place, not extracted), a tar or zip, or a folder, "
        "holding one folder per class: named by class index 0 ... K-1, every one of them "
        "(ImageNetV2), or by WordNet id, each one of classes.txt (ImageNet-Sketch). Keys are "
        "CLASSFOLDER_FILESTEM. Images are repaired, downscaled or skipped as `make shards` "
        "did for OUT (its --max_side and --quality). Resumable: rerun the same command after "
        "a crash; rerunning a finished one does nothing.",
    )
    p.add_argument("out", metavar="SHARDS", help="the shards folder (made by `make shards`)")
    p.add_argument(
        "name", metavar="NAME", help="the split's name: letters, digits, _ (e.g. imagenetv2)"
    )
    p.add_argument(
        "source", metavar="SOURCE", help="the tar.gz, tar or zip as downloaded, or the folder"
    )
    p.add_argument(
        "--shard_size",
        type=positive,
        metavar="N",
        help="images per shard (default: as make shards chooses: at most about 1 GB a shard)",
    )
    p.add_argument(
        "--processes", type=positive, default=os.cpu_count(), metavar="N", help="worker processes"
    )
    add_strict_flag(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing split NAME made from other images (never train or val)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["verify"]:
            args = verify_parser().parse_args(argv[1:])
            from prep.verify import verify

            manifest = verify(args.out, workers=args.processes)
            counts = ", ".join(
                f"{len(v['shards'])} {k} shards ({v['num_samples']} samples)"
                for k, v in manifest["splits"].items()
            )
            print(f"prep verify: {args.out} is sound: {counts}")
            return 0
        if argv[:1] == ["eval_set"]:
            args = eval_set_parser().parse_args(argv[1:])
            from prep.eval_set import add_eval_set

            add_eval_set(
                args.out,
                args.name,
                args.source,
                shard_size=args.shard_size,
                workers=args.processes,
                strict=args.strict,
                overwrite=args.overwrite,
            )
            return 0
        args = build_parser().parse_args(argv)
        from prep.build import PrepOptions, build
        from prep.sources import ArchivePaths

        options = PrepOptions(
            seed=args.seed, shard_size=args.shard_size, max_side=args.max_side, quality=args.quality
        )
        build(
            args.data,
            args.out,
            options,
            val_labels=args.val_labels,
            archives=ArchivePaths(args.train_tar, args.val_tar, args.devkit),
            workers=args.processes,
            overwrite=args.overwrite,
            strict=args.strict,
        )
        return 0
    except PrepError as e:
        print(f"prep: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable OUT, a full disk while writing the manifest, ...
        where = f" ({e.filename})" if e.filename else ""
        print(f"prep: error: {e.strerror or e}{where}; finished shards are kept", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "prep: interrupted; finished shards are kept: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
