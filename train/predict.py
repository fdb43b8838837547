"""python -m train.predict IMAGES... --weights W [--topk 5] [--json FILE | --csv FILE]: the
top-k classes of photos, with their names and probabilities.

IMAGES are files, folders (every JPEG, PNG and WebP under them) and globs. W is a run folder,
a checkpoint (best.pt, last.pt), or an export of train.export (model.safetensors, model.pth,
model.pt2, model.onnx, with its config.json). Each image is prepared as the weights' run
evaluated (--val_res, --val_resize, flip TTA) through the same DALI val transform as
train.evaluate (its CPU mode without a GPU), so the top-1 on the val images is evaluate's.
An image that cannot be read is named and skipped; the command then exits 1 at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.flags import Flag, FlagParser
from prep.atomic import write_atomic
from prep.flags import JSON
from train.config import ConfigError, derive, train_flags
from train.data import (
    DaliMissing,
    PipelineKnobs,
    make_files_pipeline,
    require_dali,
    transformed_files,
)
from train.loop import eval_logits
from train.weights import (
    CLASSES_FROM,
    EXPORT_FILES,
    RUN_FILES,
    WEIGHTS,
    Classes,
    WeightsError,
    build_model,
    export_config,
    read_classes,
    read_weights,
    train_config,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}  # and RIFF....WEBP


class PredictError(Exception):
    """Input that cannot be predicted at all; the message names it and the fix."""


@dataclass(frozen=True)
class Model:
    """What predicts: logits of a normalised batch, the classes, how to prepare images."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    classes: Classes
    image_size: int
    val_resize: int | None
    knobs: PipelineKnobs  # the run's DALI settings (the decoder's, the val transform's)
    device: torch.device
    dtype: torch.dtype  # of the images: float16 under mixed precision, as train.evaluate's
    what: str  # for the first line


def image_kind(data: bytes) -> str | None:
    """JPEG, PNG or WebP by the file's first bytes; None for anything else."""
    for magic, kind in MAGIC.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def list_images(arguments: list[str]) -> list[Path]:
    """The files to predict, in the order given (a folder's and a glob's sorted), each once."""
    found: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise PredictError(f"{argument}: a folder without JPEG, PNG or WebP images")
            found += inside
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(argument):
            matches = sorted(Path(m) for m in glob.glob(argument, recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise PredictError(f"{argument}: matches no JPEG, PNG or WebP file")
            found += files
        else:
            raise PredictError(f"{argument}: no such file or folder")
    return list(dict.fromkeys(found))


def exported_program(path: Path, flag: str) -> tuple[Callable, dict]:
    """A .pt2 or .onnx of train.export: its forward and the config.json beside it."""
    config = export_config(path)
    if not config:
        raise PredictError(
            f"{flag} {path}: no config.json of train.export beside it (the classes and the "
            "preprocessing): export again with python -m train.export"
        )
    if path.suffix == ".pt2":
        try:
            module = torch.export.load(str(path)).module()
        except Exception as e:  # a damaged or foreign file: one line, not torch's traceback
            raise PredictError(
                f"{flag} {path}: not a readable torch.export program ({e})"
            ) from None
        return (lambda images: module(images.float())), config
    try:
        import onnxruntime
    except ImportError:
        raise PredictError(
            f"{flag} {path}: an ONNX file needs onnxruntime: pip install '.[export]'"
        ) from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors: one line
        raise PredictError(f"{flag} {path}: not a readable ONNX model ({e})") from None

    def run(images: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(["logits"], {"images": images.float().cpu().numpy()})
        return torch.from_numpy(out)

    return run, config


def exported_file(path: Path) -> Path:
    """A folder of train.export's pt2 or onnx export: its file; any other path as it is."""
    if path.is_dir() and not any((path / name).is_file() for name in RUN_FILES):
        for name in (EXPORT_FILES["pt2"], EXPORT_FILES["onnx"]):
            if (path / name).is_file():
                return path / name
    return path


def load_model(args) -> Model:
    """The weights of --weights as a Model, on --device (a GPU when there is one)."""
    path = exported_file(Path(args.weights))
    if path.suffix in (".pt2", ".onnx") and path.is_file():
        given = [f"--{f}" for f in ("ema", "classes_from") if f in args.given]
        if given:
            raise PredictError(
                f"{' and '.join(given)}: for checkpoints and safetensors or torchvision "
                f"exports; {path.name} holds one set of weights and its classes"
            )
        forward, config = exported_program(path, "--weights")
        prep = config["preprocessing"]
        classes = Classes(config["class_ids"], config["class_names"], str(path))
        tta = prep["tta"]

        @torch.no_grad()
        def logits(images: torch.Tensor) -> torch.Tensor:
            out = forward(images).float()
            return (out + forward(images.flip(3)).float()) / 2 if tta else out

        size, plain = prep["input_size"][1], prep["resize"] is None
        what = f"{path.name} ({config['architecture']})"
        knobs = PipelineKnobs(val_plain_resize=plain)
        cpu, fp32 = torch.device("cpu"), torch.float32
        return Model(logits, classes, size, prep["resize"], knobs, cpu, fp32, what)
    weights = read_weights(path, ema=args.ema if "ema" in args.given else None)
    classes = read_classes(weights, args.classes_from)
    cfg = dataclasses.replace(
        train_config(weights), device=args.device, workers=args.workers, batch=args.batch,
        accum=1, micro_batch=None,
    )  # fmt: skip
    d = derive(cfg, 0, 1, 0)
    model = build_model(weights).to(d.device)
    if d.channels_last:
        model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def logits(images: torch.Tensor) -> torch.Tensor:
        return eval_logits(model, images.to(d.device), d, cfg.tta).cpu()

    what = f"ResNet-{weights.depth} ({weights.variant}, {weights.kind})"
    dtype = torch.float16 if d.amp else torch.float32  # as train.evaluate's loader
    return Model(logits, classes, d.val_res, d.val_resize, cfg.dali, d.device, dtype, what)


def readable(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(the file's bytes, None), or (None, why it is skipped)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if image_kind(data) is None:
        return None, "not a JPEG, PNG or WebP image"
    return np.frombuffer(data, dtype=np.uint8), None


class Transform:
    """The DALI val transform of files (train.data's files pipeline), built again after a
    batch that failed to decode: DALI's pipeline does not run on after an error."""

    def __init__(self, build: Callable) -> None:
        self.build = build
        self.pipe = build()

    def __call__(self, encoded: list) -> torch.Tensor:
        try:
            return transformed_files(self.pipe, encoded)
        except RuntimeError:
            self.pipe = self.build()
            raise


def decode_error(error: Exception) -> str:
    """Why DALI failed on an image, in a few words: what its message says it encountered."""
    text = str(error)
    tail = text.split("encountered:", 1)[-1]
    lines = [
        line.strip()
        for line in tail.splitlines()
        if line.strip() and "no longer valid" not in line and "Critical error" not in line
    ]
    return f"cannot be decoded ({(lines[0] if lines else text.strip())[:200]})"


def predict_files(
    model: Model, transform: Transform, paths: list[Path], topk: int, bar: tqdm
) -> tuple[list[dict], list[dict]]:
    """(per image its top-k, the images skipped and why) of one batch of files."""
    batch, kept, skipped = [], [], []
    for path in paths:
        data, why = readable(path)
        if data is None:
            skipped.append({"image": str(path), "reason": why})
        else:
            batch.append(data)
            kept.append(path)
    if not batch:
        bar.update(len(paths))
        return [], skipped
    try:
        images = transform(batch)
    except RuntimeError as e:  # one bad file fails the batch: find it, keep the others
        if len(batch) == 1:
            bar.update(len(paths))
            return [], [*skipped, {"image": str(kept[0]), "reason": decode_error(e)}]
        rows = []
        for path in kept:
            more, bad = predict_files(model, transform, [path], topk, tqdm(disable=True))
            rows += more
            skipped += bad
        bar.update(len(paths))
        return rows, skipped
    probabilities = torch.softmax(model.logits(images), dim=1)
    top = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
    rows = [
        {
            "image": str(path),
            "top": [
                {
                    "class": int(c),
                    "id": model.classes.ids[int(c)],
                    "name": model.classes.names[int(c)],
                    "probability": float(p),
                }
                for p, c in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for path, values, indices in zip(kept, top.values, top.indices, strict=True)
    ]
    bar.update(len(paths))
    return rows, skipped


def predict(model: Model, paths: list[Path], topk: int, batch: int, workers: int | None):
    """Every image's top-k, in batches through the DALI val transform; and the skipped."""
    transform = Transform(
        functools.partial(
            make_files_pipeline, batch_size=batch, num_threads=max(1, workers or 2),
            device=model.device, image_size=model.image_size, val_resize=model.val_resize,
            dtype=model.dtype, knobs=model.knobs,
        )
    )  # fmt: skip
    rows, skipped = [], []
    with tqdm(total=len(paths), unit="image", desc="predict", file=sys.stderr) as bar:
        for start in range(0, len(paths), batch):
            got, bad = predict_files(model, transform, paths[start : start + batch], topk, bar)
            rows += got
            skipped += bad
            for s in bad:
                bar.write(f"train.predict: skipped {s['image']}: {s['reason']}", file=sys.stderr)
    return rows, skipped


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "id", "name", "probability"])
    for row in rows:
        for rank, t in enumerate(row["top"], 1):
            writer.writerow([row["image"], rank, t["class"], t["id"], t["name"], t["probability"]])
    return out.getvalue()


def class_words(top: dict) -> str:
    """`name (id)`, or the id alone when it is the only name known."""
    return top["id"] if top["name"] == top["id"] else f"{top['name']} ({top['id']})"


def line_of(row: dict) -> str:
    best = ", ".join(f"{class_words(t)} {100 * t['probability']:.1f}%" for t in row["top"])
    return f"{row['image']}: {best}"


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.predict",
        description="The top-k classes of photos (JPEG, PNG, WebP: files, folders, globs) "
        "with their names and probabilities, each image prepared as the weights' run "
        "evaluated, through DALI. Skipped images are named; the exit code is then 1.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders, globs")
    flags = train_flags()
    p.add(
        WEIGHTS,
        Flag("topk", int, 5, "how many classes to give per image"),
        JSON,
        Flag("csv", str, None, "write every image's top-k to this CSV file", metavar="FILE"),
        flags["ema"],
        CLASSES_FROM,
        flags["batch"],
        flags["device"],
        flags["workers"],
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = parser.given
    try:
        if args.topk < 1 or args.batch < 1:
            raise PredictError("--topk and --batch must be 1 or more")
        require_dali()
        paths = list_images(args.images)
        model = load_model(args)
        rows, skipped = predict(model, paths, args.topk, args.batch, args.workers)
    except (PredictError, WeightsError, ConfigError, DaliMissing) as e:
        print(f"train.predict: error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        print(line_of(row))
    if args.json:
        record = {"weights": str(args.weights), "model": model.what, "images": rows}
        write_atomic(args.json, json.dumps(record | {"skipped": skipped}, indent=1) + "\n")
    if args.csv:
        write_atomic(args.csv, csv_text(rows))
    if skipped:
        print(
            f"train.predict: {len(skipped)} of {len(paths)} images skipped (named above)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
