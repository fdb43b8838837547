"""python -m prep DATA OUT [options] | python -m prep verify OUT
| python -m prep eval_set SHARDS NAME SOURCE [options]"""

from __future__ import annotations

import argparse
import sys

from models.flags import Flag, FlagParser
from prep.errors import PrepError
from prep.flags import OVERWRITE, PROCESSES, RETIRED, SHARD_SIZE, STRICT, positive

# --seed was the name of --shuffle_seed; the trainer's --seed seeds the run.
ALIASES = {"--seed": "--shuffle_seed"}

USAGE = """\
python -m prep DATA OUT [options]     convert ImageNet into shards (make shards)
python -m prep OUT --train_tar ILSVRC2012_img_train.tar --val_tar ILSVRC2012_img_val.tar \\
    [--devkit ILSVRC2012_devkit_t12.tar.gz] [options]
python -m prep verify OUT [--processes N]   check a shards folder (make verify-shards)
python -m prep eval_set SHARDS NAME SOURCE [options]   add an evaluation split (ImageNetV2)"""


def quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be in 1..100, got {text}")
    return value


TRAIN_TAR = Flag(
    "train_tar",
    str,
    None,
    "ILSVRC2012_img_train.tar, where it is (instead of DATA; with --val_tar)",
    metavar="FILE",
)
VAL_TAR = Flag(
    "val_tar",
    str,
    None,
    "ILSVRC2012_img_val.tar, where it is (instead of DATA; with --train_tar)",
    metavar="FILE",
)
DEVKIT = Flag(
    "devkit",
    str,
    None,
    "ILSVRC2012_devkit_t12.tar.gz, the val tar's labels (default: the one beside the val tar)",
    metavar="FILE",
)
VAL_LABELS = Flag(
    "val_labels",
    str,
    None,
    "labels of a flat val folder or of the val tar: lines `filename wnid` (or Kaggle's "
    "LOC_val_solution.csv)",
    metavar="FILE",
)
SHUFFLE_SEED = Flag("shuffle_seed", int, 0, "seed of the global shuffle of the train samples")
MAX_SIDE = Flag(
    "max_side",
    positive,
    None,
    "downscale images whose longer side exceeds N pixels (faster decoding later; default: keep "
    "every image as it is)",
    metavar="N",
)
QUALITY = Flag(
    "quality", quality, 95, "JPEG quality of re-encoded images, repaired or downscaled", metavar="Q"
)


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m prep",
        usage=USAGE,
        aliases=ALIASES,
        retired=RETIRED,
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
    p.add(TRAIN_TAR, VAL_TAR, DEVKIT, VAL_LABELS, SHARD_SIZE, SHUFFLE_SEED, MAX_SIDE, QUALITY)
    p.add(PROCESSES, STRICT, OVERWRITE)
    return p


def verify_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m prep verify",
        retired=RETIRED,
        description="Check manifest against tars against indexes: counts, sizes, sha256, "
        "labels in range. Exits non-zero naming the first problem.",
    )
    p.add_argument("out", help="the shards folder")
    p.add(PROCESSES)
    return p


def eval_set_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m prep eval_set",
        retired=RETIRED,
        description="Add an evaluation split NAME (NAME-000000.tar ... with DALI indexes) to "
        "a finished shards folder SHARDS, beside train and val, labelled with its classes.txt; "
        "evaluate it with `python -m train.evaluate --split NAME`. SOURCE: ImageNetV2's "
        "tar.gz as downloaded (read in place, not extracted), a tar or zip, or a folder, "
        "holding one folder per class: named by class index 0 ... K-1, every one of them "
        "(ImageNetV2), or by WordNet id, each one of classes.txt (ImageNet-Sketch). Keys are "
        "CLASSFOLDER_FILESTEM. Images are repaired, downscaled or skipped as `make shards` "
        "did for SHARDS (its --max_side and --quality). Resumable: rerun the same command "
        "after a crash; rerunning a finished one does nothing.",
    )
    p.add_argument("out", metavar="SHARDS", help="the shards folder (made by `make shards`)")
    p.add_argument(
        "name", metavar="NAME", help="the split's name: letters, digits, _ (e.g. imagenetv2)"
    )
    p.add_argument(
        "source", metavar="SOURCE", help="the tar.gz, tar or zip as downloaded, or the folder"
    )
    p.add(SHARD_SIZE, PROCESSES, STRICT, OVERWRITE)
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
            seed=args.shuffle_seed,
            shard_size=args.shard_size,
            max_side=args.max_side,
            quality=args.quality,
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
