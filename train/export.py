"""python -m train.export RUN_OR_CHECKPOINT --format torchvision|safetensors|pt2|onnx --out DIR:
the weights of a run in a format other tools read, with a model card (README.md) and the
config.json that predict and evaluate read back.

The weights are the ones that scored best (best.pt's `best_weights`: the EMA or the live
weights) unless --ema / --no_ema says. Each file is checked after it is written: loaded back
as its format's reader loads it, its logits compared with our model's on a random batch.

- torchvision: model.pth, a bare state_dict that torchvision.models.resnet50/101/152(
  num_classes=C) loads with strict=True; v1.5 networks without BlurPool only (preact and
  BlurPool networks are other functions: refused, saying why).
- safetensors: model.safetensors, in the layout timm reads (config.json: `architecture`,
  `num_classes`, `pretrained_cfg` with input size, crop_pct, mean, std; `label_names`,
  `label_descriptions`), every variant.
- pt2: torch.export of the eval-mode network, batch size dynamic: torch.export.load(path)
  .module()(images).
- onnx: through the optional extra (pip install '.[export]'), opset ONNX_OPSET, batch size
  dynamic; checked with onnxruntime when it is installed.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from models.flags import Flag, FlagParser
from prep.atomic import atomic_file, atomic_path, write_atomic
from prep.provenance import code_version
from train.config import TrainConfig, train_flags
from train.logs import fmt
from train.recipes import RECIPES
from train.shards import ShardsError
from train.weights import (
    CLASSES_FROM,
    EXPORT_CONFIG,
    EXPORT_FILES,
    EXPORT_MARK,
    NO_NAMES,
    Classes,
    Weights,
    WeightsError,
    build_model,
    depth_of,
    export_config,
    preprocessing,
    read_classes,
    read_weights,
    train_config,
)

FORMATS = ("torchvision", "safetensors", "pt2", "onnx")
FILES = EXPORT_FILES
ONNX_OPSET = 18
CARD = "README.md"
MAX_BATCH = 4096  # the dynamic batch dimension's upper bound in pt2 and onnx
TOLERANCE = 1e-3  # the largest |logit difference| a check accepts (float32, another runtime)


class ExportError(Exception):
    """What cannot be exported as asked; the message says why and what to do."""


def torchvision_refusal(weights: Weights) -> str | None:
    """Why torchvision's ResNet cannot take these weights, or None when it can."""
    if weights.variant == "preact":
        return (
            "the preact variant (pre-activation blocks, a BN-ReLU after the last stage) is "
            "another network than torchvision's ResNet: its keys do not load there; export "
            "--format safetensors, pt2 or onnx instead"
        )
    if weights.blurpool:
        return (
            "a BlurPool network blurs before its strided convolutions: torchvision's ResNet "
            "would load its keys and compute something else; export --format safetensors, pt2 "
            "or onnx instead"
        )
    return None


def run_folder(weights: Weights) -> Path | None:
    """The run folder of a checkpoint (where its summary and evaluations are)."""
    if weights.path is None or not weights.saved:
        return None
    folder = weights.path.parent
    return folder if (folder / "config.json").is_file() else None


def architecture(weights: Weights) -> str:
    """timm's name for a v1.5 network (its resnet50/101/152 are torchvision's), ours else."""
    if weights.variant == "v1.5" and not weights.blurpool:
        return f"resnet{weights.depth}"
    blur = "-blurpool" if weights.blurpool else ""
    return f"imagenet_sd/resnet{weights.depth}-{weights.variant}{blur}"


def export_record(weights: Weights, classes: Classes, fmt: str, source: Path) -> dict:
    """config.json: what the weights are, how to prepare an image, the classes, the run."""
    cfg, known = train_config(weights), weights.config is not None  # known: the run's flags
    prep = preprocessing(cfg)
    pretrained = {
        "input_size": prep["input_size"],
        "crop_pct": prep["crop_pct"],
        "crop_mode": prep["crop_mode"],
        "interpolation": prep["interpolation"],
        "mean": prep["mean"],
        "std": prep["std"],
        "num_classes": weights.num_classes,
        "first_conv": "conv1",
        "classifier": "fc",
    }
    return {
        EXPORT_MARK: 1,
        "architecture": architecture(weights),
        "num_classes": weights.num_classes,
        "num_features": 2048,
        "pretrained_cfg": pretrained,
        "label_names": classes.ids,
        "label_descriptions": dict(zip(classes.ids, classes.names, strict=True)),
        "format": fmt,
        "file": FILES[fmt],
        "depth": weights.depth,
        "variant": weights.variant,
        "blurpool": bool(weights.blurpool),
        "sd": cfg.sd if known else None,
        "sd_mode": cfg.sd_mode if known else None,
        "pL": cfg.pL if known else None,
        "class_ids": classes.ids,
        "class_names": classes.names,
        "preprocessing": prep,
        "weights": weights.scored,
        "source": str(source),
        "epoch": weights.saved.get("epoch"),
        "recipe": cfg.recipe if known else None,
        "train_config": weights.config,
        "trained_with": weights.saved.get("code_version") or weights.export.get("trained_with"),
        "code_version": code_version(),
        "exported": date.today().isoformat(),
    }


def example_batch(weights: Weights, cfg: TrainConfig, batch: int = 2) -> torch.Tensor:
    size = cfg.val_res or cfg.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def max_difference(a: torch.Tensor, b) -> float:
    return float((a - torch.as_tensor(np.asarray(b))).abs().max())


def write_torchvision(model, path: Path, images, expected) -> str:
    with atomic_file(path) as f:
        torch.save(model.state_dict(), f)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        import torchvision
    except ImportError:  # not a dependency: check with our v1.5 network, the same function
        reloaded = clone_of(model)
        reloaded.load_state_dict(state, strict=True)
        reader = "our v1.5 network (torchvision is not installed)"
    else:
        builder = f"resnet{depth_of(state)}"
        reloaded = getattr(torchvision.models, builder)(num_classes=model.fc.out_features)
        reloaded.load_state_dict(state, strict=True)
        reader = f"torchvision.models.{builder} (strict)"
    with torch.no_grad():
        got = reloaded.eval()(images)
    return checked(reader, expected, got)


def clone_of(model):
    from models import build_resnet

    return build_resnet(
        depth_of(model.state_dict()),
        variant=model.variant,
        num_classes=model.fc.out_features,
        blurpool=model.blurpool,
    )


def write_safetensors(model, path: Path, images, expected) -> str:
    from safetensors.torch import load_file, save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as name:
        save_file(state, str(name), metadata={"format": "pt"})
    reloaded = clone_of(model)
    reloaded.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        got = reloaded.eval()(images)
    return checked("safetensors.torch.load_file + our network (strict)", expected, got)


def batch_dimension():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def write_pt2(model, path: Path, images, expected) -> str:
    program = torch.export.export(model, (images,), dynamic_shapes=({0: batch_dimension()},))
    with atomic_file(path) as f:
        torch.export.save(program, f)
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        got = loaded(images[:1])  # another batch size than the example's: dynamic
    return checked("torch.export.load (batch 1)", expected[:1], got)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError(
            "--format onnx needs the optional extra: pip install '.[export]' (onnx, "
            "onnxscript, onnxruntime)"
        ) from None


def check_out(out: Path) -> None:
    """--out must not be a run folder: the export's config.json would replace the run's."""
    run_files = [n for n in ("last.pt", "best.pt", "training_summary.json") if (out / n).exists()]
    foreign = (out / EXPORT_CONFIG).is_file() and not export_config(out / EXPORT_CONFIG)
    if run_files or foreign:
        raise ExportError(
            f"--out {out} holds a run ({', '.join(run_files) or EXPORT_CONFIG}): its "
            "config.json would be replaced; give another folder (make export writes to "
            "RUN/export-FORMAT)"
        )


def write_onnx(model, path: Path, images, expected) -> str:
    program = torch.onnx.export(
        model,
        (images,),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch_dimension()},),
        verbose=False,
    )
    with atomic_path(path) as name:
        program.save(str(name))
    try:
        import onnxruntime
    except ImportError:
        return "not run (onnxruntime is not installed)"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images[:1].numpy()})[0]
    return checked("onnxruntime (batch 1)", expected[:1], torch.from_numpy(got))


WRITERS = {
    "torchvision": write_torchvision,
    "safetensors": write_safetensors,
    "pt2": write_pt2,
    "onnx": write_onnx,
}


def checked(reader: str, expected: torch.Tensor, got) -> str:
    difference = max_difference(expected, got)
    if not difference <= TOLERANCE:
        raise ExportError(
            f"the exported file computes other logits than our model ({reader}: largest "
            f"difference {difference:.3g}): please report this"
        )
    return f"{reader}: largest |logit difference| {difference:.2e}"


def split_figures(folder: Path, weights: Weights) -> list[dict]:
    """Each evaluation of these weights in the run folder that is newer than them
    (`{split}_{best,final}.npz` of train.compare): the split, top-1, top-5, ReaL top-1."""
    if weights.path is None:
        return []
    # train.compare's files: *_final.npz scored last.pt's live weights, *_best.npz best.pt's
    # best weights (best_weights): the ones these are, if any
    if weights.path.name == "last.pt" and weights.scored == "live":
        which = "final"
    elif weights.path.name == "best.pt" and weights.scored == weights.saved.get("best_weights"):
        which = "best"
    else:
        return []
    rows = []
    for path in sorted(folder.glob(f"*_{which}.npz")):
        if path.stat().st_mtime < weights.path.stat().st_mtime:
            continue  # an evaluation of weights since replaced
        with np.load(path) as saved:
            logits, labels = torch.from_numpy(saved["logits"]), torch.from_numpy(saved["labels"])
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            row = {
                "split": str(saved["split"]),
                "images": len(labels),
                "top1": float((top5[:, 0] == labels).float().mean()),
                "top5": float((top5 == labels[:, None]).any(1).float().mean()),
            }
            if "real_correct" in saved.files:
                real = saved["real_correct"]
                labelled = real >= 0
                row["real_top1"] = float(real[labelled].mean()) if labelled.any() else None
                row["real_images"] = int(labelled.sum())
        rows.append(row)
    return rows


def run_figures(weights: Weights) -> dict:
    """The val figures of these weights at the epoch they were saved (the run's history),
    and the run's summary and machine when its folder is at hand."""
    saved, figures = weights.saved, {}
    history = saved.get("history") or []
    epoch = saved.get("epoch")
    suffix = "_ema" if weights.scored == "ema" else ""
    row = next((r for r in history if r.get("epoch") == epoch), None)
    if row is not None and row.get(f"val_top1{suffix}") is not None:
        figures["val"] = {
            "epoch": epoch,
            "top1": row[f"val_top1{suffix}"],
            "top5": row[f"val_top5{suffix}"],
        }
    folder = run_folder(weights)
    if folder is not None:
        summary = folder / "training_summary.json"
        if summary.is_file():
            figures["summary"] = json.loads(summary.read_text())
        figures["machine"] = json.loads((folder / "config.json").read_text()).get("machine")
        figures["splits"] = split_figures(folder, weights)
    return figures


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def model_card(record: dict, weights: Weights, figures: dict, checks: str, classes: Classes):
    """README.md: the model, the recipe and flags, this run's measured figures, how to use
    it; literature figures labelled as such."""
    name = f"ResNet-{record['depth']} ({record['variant']}"
    name += ", BlurPool" if record["blurpool"] else ""
    name += f", stochastic depth {record['sd_mode']} pL {record['pL']})" if record["sd"] else ")"
    lines = [
        f"# {name}",
        "",
        f"Exported by `python -m train.export` on {record['exported']} from `{record['source']}`"
        f" ({'the EMA' if record['weights'] == 'ema' else 'the live'} weights) with code "
        f"version {record['code_version']}"
        + (f"; trained with {record['trained_with']}" if record["trained_with"] else "")
        + f". Format: {record['format']} (`{record['file']}`); checked: {checks}.",
        "",
        "| | |",
        "|---|---|",
        *card_facts(record, name, weights, figures, classes),
        "",
        "## Measured on this run",
        "",
        *card_figures(figures),
        *card_literature(record["train_config"] or {}),
        *card_use(record),
    ]
    return "\n".join(lines)


def card_facts(record: dict, name: str, weights: Weights, figures: dict, classes: Classes):
    """The card's table: network, classes, input, recipe, training time, machine."""
    cfg, prep = record["train_config"] or {}, record["preprocessing"]
    crop = (
        "resized to the square"
        if prep["resize"] is None
        else f"shorter side to {prep['resize']} then a centre crop"
    )
    lines = [
        f"| network | {name}, {record['num_classes']} classes, architecture "
        f"`{record['architecture']}` |",
        f"| classes | {record['num_classes']}, names from {classes.source} |",
        f"| input | {prep['input_size'][1]}x{prep['input_size'][2]} RGB, {crop}, mean "
        f"{prep['mean']}, std {prep['std']}{', flip TTA' if prep['tta'] else ''} |",
    ]
    if cfg:
        lines.append(
            f"| recipe | {cfg.get('recipe')}: {cfg.get('epochs')} epochs, global batch "
            f"{cfg.get('batch')}, optimizer {cfg.get('optimizer')}, label smoothing "
            f"{cfg.get('label_smoothing')}, EMA {cfg.get('ema')} |"
        )
    summary, machine = figures.get("summary"), figures.get("machine")
    if summary:
        lines.append(
            f"| training | {summary['epochs_completed']} epochs in "
            f"{duration(summary.get('total_seconds') or 0)} (the run's own time, over its "
            "resumes) |"
        )
    elif weights.saved:  # the checkpoint without its run folder
        lines.append(
            f"| training | {weights.saved['epoch']} epochs in "
            f"{duration(weights.saved['run_seconds'])} (the run's own time, from the "
            "checkpoint) |"
        )
    if machine:
        lines.append(f"| machine | {', '.join(f'{k} {v}' for k, v in machine.items())} |")
    return lines


def card_figures(figures: dict) -> list[str]:
    """The measured figures: these weights on val, the run's best and final, other splits."""
    measured, summary = [], figures.get("summary")
    if "val" in figures:
        v = figures["val"]
        measured.append(
            f"| val (epoch {v['epoch']}, these weights) | {fmt(v['top1'])} | {fmt(v['top5'])} | |"
        )
    if summary:
        best = " (EMA)" if summary.get("best_weights") == "ema" else ""
        measured.append(
            f"| val, run's best (epoch {summary['best_epoch']}){best} | "
            f"{fmt(summary['best_top1'])} | {fmt(summary['best_top5'])} | |"
        )
        measured.append(
            f"| val, run's final (epoch {summary['epochs_completed']}) | "
            f"{fmt(summary['final_top1'])} | {fmt(summary['final_top5'])} | |"
        )
    for row in figures.get("splits", []):
        real = fmt(row.get("real_top1")) if "real_top1" in row else ""
        measured.append(
            f"| {row['split']} ({row['images']:,} images) | {fmt(row['top1'])} | "
            f"{fmt(row['top5'])} | {real} |"
        )
    if not measured:
        return ["Nothing measured: the weights came without their run's figures."]
    return ["| split | top-1 | top-5 | ReaL top-1 |", "|---|---|---|---|", *measured]


def card_literature(cfg: dict) -> list[str]:
    recipe = RECIPES.get(cfg.get("recipe")) if cfg else None
    if recipe is None:
        return []
    return [
        "",
        "## Literature (not measured here)",
        "",
        f"The recipe `{cfg['recipe']}` follows {recipe.source}. Reported there, for its own "
        f"runs: {recipe.literature}.",
    ]


def card_use(record: dict) -> list[str]:
    flags = {k: v for k, v in (record["train_config"] or {}).items() if k != "dali"}
    evaluate_line = (  # train.evaluate reads these two formats
        [f"python -m train.evaluate --data_dir shards --weights {record['file']}"]
        if record["format"] in ("torchvision", "safetensors")
        else []
    )
    return [
        "",
        "## Use",
        "",
        "```",
        f"python -m train.predict photo.jpg --weights {record['file']}",
        *evaluate_line,
        "```",
        "",
        "## The run's flags",
        "",
        "```json",
        json.dumps(flags, indent=1),
        "```",
        "",
    ]


def export(
    path: Path,
    fmt: str,
    out: Path,
    ema: bool | None = None,
    data_dir: str | None = None,
) -> dict:
    """Write the weights at `path` in format `fmt` to `out`, with config.json and README.md;
    return config.json's record."""
    check_out(out)
    if fmt == "onnx":
        require_onnx()
    weights = read_weights(path, ema=ema, flag="RUN_OR_CHECKPOINT")
    if fmt == "torchvision" and (why := torchvision_refusal(weights)):
        raise ExportError(f"--format torchvision: {why}")
    classes = read_classes(weights, data_dir)
    cfg = train_config(weights)
    model = build_model(weights)
    images = example_batch(weights, cfg)
    with torch.no_grad():
        expected = model(images)
    out.mkdir(parents=True, exist_ok=True)
    checks = WRITERS[fmt](model, out / FILES[fmt], images, expected)
    record = export_record(weights, classes, fmt, weights.path or path)
    write_atomic(out / EXPORT_CONFIG, json.dumps(record, indent=1) + "\n")
    card = model_card(record, weights, run_figures(weights), checks, classes)
    write_atomic(out / CARD, card)
    return record | {"checked": checks, "classes_from": classes.source}


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train.export",
        description="Export a run's weights (those that scored best unless --ema/--no_ema "
        "says) as a torchvision state_dict, safetensors (timm's layout), a torch.export "
        "program or ONNX, with config.json (the network, preprocessing, classes, the run's "
        "flags) and a model card (README.md); each file is loaded back and checked.",
    )
    p.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder (its best.pt), a checkpoint (best.pt, last.pt), an export or a "
        "bare state_dict",
    )
    p.add(
        Flag("format", str, "safetensors", "the format to write", choices=FORMATS),
        Flag(
            "out",
            str,
            None,
            "the folder to write (model file, config.json, README.md)",
            metavar="DIR",
            required=True,
        ),  # fmt: skip
        train_flags()["ema"],
        CLASSES_FROM,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ema = args.ema if "ema" in parser.given else None
    try:
        record = export(Path(args.source), args.format, Path(args.out), ema, args.classes_from)
    except (ExportError, WeightsError, ShardsError) as e:
        print(f"train.export: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if record["classes_from"] == NO_NAMES:
        print("train.export: warning: no class names at hand, the classes are numbered; pass "
              "--classes_from SHARDS (the shards the run trained on) for their names")  # fmt: skip
    print(
        f"exported ResNet-{record['depth']} ({record['variant']}, {record['weights']} weights) "
        f"as {record['format']}: {out / record['file']}, {out / EXPORT_CONFIG}, {out / CARD}; "
        f"checked: {record['checked']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
