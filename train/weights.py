"""The weights a command reads (train.evaluate, train.export, train.predict, the trainer's
--init_weights), as one `Weights`: one of this project's checkpoints (best.pt, last.pt), a run
folder (its best.pt, else last.pt), an export of train.export (model.safetensors or a
torchvision .pth, with the config.json written beside it), or a bare state_dict (torchvision's
resnet50/101/152 .pth, or our model saved alone).

A checkpoint gives the weights its run scored best with (best_weights: live or EMA) unless
`ema` says which; a bare state_dict is fitted to a depth and whichever variant its keys fit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models import STAGE_BLOCKS, build_resnet
from models.flags import Flag
from prep.class_names import imagenet_names
from train import checkpoint
from train.config import ConfigError, TrainConfig, from_dict
from train.data import IMAGENET_MEAN, IMAGENET_STD, default_val_resize
from train.shards import ShardsError, open_shards

# Prefixes that wrappers leave on parameter names: DDP's module, torch.compile's _orig_mod.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
EXPORT_CONFIG = "config.json"  # beside an export: what train.export wrote (EXPORT_MARK in it)
EXPORT_MARK = "imagenet_sd_export"  # the key that says a config.json is train.export's
EXPORT_FILES = {  # the file train.export writes, per format
    "torchvision": "model.pth",
    "safetensors": "model.safetensors",
    "pt2": "model.pt2",
    "onnx": "model.onnx",
}
# the weights of a folder, by choice: a run's, then an export's that these functions read
RUN_FILES = ("best.pt", "last.pt", EXPORT_FILES["safetensors"], EXPORT_FILES["torchvision"])


WEIGHTS = Flag(
    "weights",
    str,
    None,
    "a run folder (its best.pt), one of this project's checkpoints (best.pt, last.pt), an "
    "export of train.export (model.safetensors, model.pth; train.predict also model.pt2 and "
    "model.onnx) or a bare state_dict (torchvision's resnet50/101/152 .pth, or our model "
    "saved alone)",
    metavar="PATH",
    required=True,
)
CLASSES_FROM = Flag(
    "classes_from",
    str,
    None,
    "the shards whose class names to use (default: an export's own, else the run's "
    "--data_dir shards; numbers when neither is at hand)",
    metavar="SHARDS",
)


class WeightsError(Exception):
    """Weights that cannot be read or fitted; the message names the file and the fix."""


@dataclass(frozen=True)
class Weights:
    state_dict: dict[str, torch.Tensor]
    depth: int
    variant: str
    num_classes: int
    kind: str  # what the file was, for the report
    config: dict | None  # the training config of one of our checkpoints or exports
    scored: str = "live"  # which of a checkpoint's weights: live, or ema (the average)
    path: Path | None = None  # the file read (a folder's best.pt, ...)
    blurpool: bool | None = None  # known from a checkpoint or export; None: a bare state_dict
    export: dict = field(default_factory=dict)  # an export's config.json (class names, ...)
    saved: dict = field(default_factory=dict)  # a checkpoint's epoch, figures, time, version


def unwrap(state: dict) -> dict:
    """The state_dict without DDP's or torch.compile's prefixes."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def mismatch(state: dict, depth: int, variant: str, num_classes: int) -> list[str]:
    """How `state` differs from our ResNet-`depth` `variant`: the first differing keys."""
    expected = build_resnet(depth, variant=variant, num_classes=num_classes).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    return problems


def depth_of(state: dict) -> int | None:
    """The ResNet depth whose layer3 has as many blocks as `state`'s; None when none has."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layer3.")}
    return next((d for d, stages in STAGE_BLOCKS.items() if len(blocks) == stages[2]), None)


def depth_hint(state: dict) -> str:
    """' (its layer3 has 23 blocks: ResNet-101? pass --depth 101)' when layer3's block count
    says so."""
    depth = depth_of(state)
    if depth is None:
        return ""
    return (
        f" (its layer3 has {STAGE_BLOCKS[depth][2]} blocks: ResNet-{depth}? pass --depth {depth})"
    )


def weights_file(path: Path, flag: str) -> Path:
    """The file to read: `path`, or for a folder (a run's, an export's) the first of RUN_FILES
    in it."""
    if path.is_dir():
        found = next((path / name for name in RUN_FILES if (path / name).is_file()), None)
        if found is None:
            raise WeightsError(
                f"{flag} {path}: a folder without {', '.join(RUN_FILES)}: give a run folder, "
                "an export's folder or a weights file"
            )
        return found
    if not path.is_file():
        raise WeightsError(f"{flag} {path}: no such file")
    return path


def read_weights(
    path: Path,
    depth: int | None = None,
    variant: str | None = None,
    ema: bool | None = None,
    flag: str = "--weights",
) -> Weights:
    """The weights to use: a checkpoint's averaged (`ema` True) or live (False) weights, by
    default (None) the ones its run scored best with; an export's; or a bare state_dict.
    `flag` names the argument in the messages."""
    path = weights_file(Path(path), flag)
    if path.suffix == ".safetensors":
        return safetensors_weights(path, depth, variant, ema, flag)
    try:
        loaded = checkpoint.load(path)
    except Exception as e:  # a damaged or foreign file: say which, not where torch failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{flag} {path}: not a checkpoint or state_dict that loads safely ({first})"
        ) from None
    if checkpoint.is_training_state(loaded):
        found = loaded.get("format", checkpoint.UNNUMBERED)
        if found != checkpoint.FORMAT:
            raise WeightsError(
                f"{flag} {path} is a checkpoint of format {found}, written by another version "
                f"of this project; this code reads format {checkpoint.FORMAT}: save its weights "
                f"alone, torch.save(torch.load(PATH, weights_only=False)['model'], 'weights.pth'), "
                "and pass that file"
            )
        return checkpoint_weights(loaded, path, depth, variant, ema, flag)
    if ema:
        raise WeightsError(
            f"--ema: {path} is a bare state_dict; averaged weights come in this project's "
            "checkpoints of runs trained with --ema"
        )
    return state_dict_weights(loaded, path, depth, variant, flag)


def checkpoint_weights(
    loaded: dict,
    path: Path,
    depth: int | None,
    variant: str | None,
    ema: bool | None,
    flag: str = "--weights",
) -> Weights:
    """The live weights of one of our checkpoints, or with `ema` their average; by default
    (None) the ones that scored its run's best top-1 (`best_weights`), as the run reported."""
    config = loaded["config"]
    clash = [
        f"--{name} {given} (it holds {config[name]})"
        for name, given in (("depth", depth), ("variant", variant))
        if given is not None and given != config[name]
    ]
    if clash:
        raise WeightsError(
            f"{flag} {path} is one of our checkpoints of another model: "
            f"{', '.join(clash)}; drop those flags"
        )
    if ema is None:
        ema = loaded["best_weights"] == "ema" and loaded["ema"] is not None
    if ema and loaded["ema"] is None:
        raise WeightsError(
            f"--ema: {path} holds no averaged weights (its run was trained without --ema); "
            "drop --ema to use its weights"
        )
    epoch, steps = loaded["epoch"], loaded["steps_done"]
    when = f"in epoch {epoch + 1}, step {steps}" if steps else f"after epoch {epoch}"
    saved = {
        k: loaded[k]
        for k in ("epoch", "steps_done", "best_top1", "best_weights", "run_seconds", "history")
    }
    return Weights(
        unwrap(loaded["ema" if ema else "model"]),
        config["depth"],
        config["variant"],
        loaded["num_classes"],
        f"checkpoint {when}, {'EMA' if ema else 'live'} weights",
        config,
        "ema" if ema else "live",
        path=path,
        blurpool=bool(config["blurpool"]),
        saved=saved | {"code_version": loaded["code_version"]},
    )


def export_config(path: Path) -> dict:
    """The config.json that train.export wrote beside `path`; {} when there is none."""
    beside = path.parent / EXPORT_CONFIG
    try:
        found = json.loads(beside.read_text()) if beside.is_file() else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) and EXPORT_MARK in found else {}


def state_dict_weights(
    loaded, path: Path, depth: int | None, variant: str | None, flag: str = "--weights"
) -> Weights:
    """A bare state_dict (torchvision's .pth, our export, or our model saved alone), fitted to
    a variant; with an export's config.json beside it, the network that one names."""
    for wrapper in ("model", "state_dict"):  # e.g. the torchvision reference's checkpoints
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise WeightsError(f"{flag} {path}: holds no state_dict (a dict of tensors)")
    state = unwrap(loaded)
    if "fc.weight" not in state:
        raise WeightsError(f"{flag} {path}: no fc.weight, so not a ResNet state_dict")
    exported = export_config(path)
    if exported:
        depth, variant = depth or exported["depth"], variant or exported["variant"]
    depth = depth or depth_of(state) or 50
    num_classes = state["fc.weight"].shape[0]
    tried = {}
    for candidate in [variant] if variant else ["v1.5", "preact"]:  # torchvision's first
        problems = mismatch(state, depth, candidate, num_classes)
        if not problems:
            return Weights(
                state, depth, candidate, num_classes,
                "export" if exported else "state_dict", exported.get("train_config"),
                path=path, blurpool=exported.get("blurpool"), export=exported,
            )  # fmt: skip
        tried[candidate] = problems
    raise WeightsError(
        f"{flag} {path} fits no ResNet-{depth} ("
        + "; ".join(f"{v}: {' / '.join(p)}" for v, p in tried.items())
        + ")"
        + depth_hint(state)
    )


def safetensors_weights(
    path: Path, depth: int | None, variant: str | None, ema: bool | None, flag: str
) -> Weights:
    """model.safetensors of train.export (its config.json beside it names the network), or
    another ResNet state_dict saved as safetensors (fitted as a bare state_dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if ema:
        raise WeightsError(f"--ema: {path} holds one set of weights; drop --ema")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{flag} {path}: not a readable safetensors file ({e})") from None
    return state_dict_weights(state, path, depth, variant, flag)


def build_model(weights: Weights, blurpool: bool = False) -> torch.nn.Module:
    """Our network with these weights loaded (strict), in eval mode on the CPU. `blurpool`
    for a bare state_dict, whose file cannot say."""
    model = build_resnet(
        weights.depth,
        variant=weights.variant,
        num_classes=weights.num_classes,
        blurpool=weights.blurpool if weights.blurpool is not None else blurpool,
    )
    model.load_state_dict(weights.state_dict)
    return model.eval()


NO_NAMES = "nowhere: numbers (pass --classes_from SHARDS for the names)"


@dataclass(frozen=True)
class Classes:
    ids: list[str]  # WordNet ids (or folder names), in class-index order
    names: list[str]  # their names; the ids where no name is known
    source: str  # where they were read


def read_classes(weights: Weights, data_dir: str | None) -> Classes:
    """The class ids and names: from the shards at `data_dir` (--classes_from), an export's
    config.json, the run's own shards (its --data_dir); numbers when none of them is at
    hand."""
    count = weights.num_classes
    exported = weights.export
    if not data_dir and exported.get("class_ids"):
        return Classes(exported["class_ids"], exported["class_names"], str(weights.path))
    folder = data_dir or (weights.config or {}).get("data_dir")
    try:
        shards = open_shards(folder) if folder else None
    except ShardsError as e:
        if data_dir:
            raise WeightsError(f"--classes_from {data_dir}: {e}") from None
        shards = None  # the run's shards are elsewhere now: numbers
    if shards is None and count == len(imagenet_names()):
        ids = sorted(imagenet_names())  # torchvision's and our class indices: sorted wnids
        names = [imagenet_names()[i] for i in ids]
        return Classes(ids, names, "ImageNet-1k's, assumed: 1,000 classes and no shards at hand")
    if shards is None:
        numbers = [str(i) for i in range(count)]
        return Classes(numbers, numbers, NO_NAMES)
    if shards.num_classes != count:
        raise WeightsError(
            f"the shards in {folder} have {shards.num_classes} classes, the weights classify "
            f"{count}: pass --classes_from with the shards the weights were trained on"
        )
    return Classes(shards.class_ids(), shards.class_names(), f"the shards in {folder}")


def train_config(weights: Weights) -> TrainConfig:
    """The run's config that the weights carry (the defaults for a bare state_dict)."""
    try:
        return from_dict(weights.config) if weights.config else TrainConfig()
    except (TypeError, KeyError) as e:  # a config.json of another version of this project
        raise WeightsError(
            f"{weights.path}: its run's flags are not this version's ({e}): use the code "
            "version that wrote it"
        ) from None


def preprocessing(cfg: TrainConfig) -> dict:
    """How an image is prepared for these weights: the run's val transform."""
    size = cfg.val_res or cfg.image_size
    resize = cfg.val_resize or default_val_resize(size)
    plain = cfg.dali.val_plain_resize
    return {
        "input_size": [3, size, size],
        "resize": None if plain else resize,
        "crop_pct": 1.0 if plain else size / resize,  # timm: floor(size / crop_pct) = resize
        "crop_mode": "squash" if plain else "center",
        "interpolation": "bilinear",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "tta": bool(cfg.tta),
    }


def start_from_weights(model: torch.nn.Module, cfg: TrainConfig, num_classes: int) -> str:
    """--init_weights: load its weights into the new run's model, the classifier (fc) left as
    built when the class count differs; the line that says what was done. Weights of another
    network (depth, variant, BlurPool) are a ConfigError."""
    path = cfg.init_weights
    try:
        weights = read_weights(Path(path), cfg.depth, cfg.variant, flag="--init_weights")
    except WeightsError as e:
        found = identified(Path(path))
        if found is None:
            raise ConfigError(str(e)) from None
        raise ConfigError(
            f"--init_weights {path}: weights of a ResNet-{found.depth} {found.variant}, this "
            f"run trains a ResNet-{cfg.depth} {cfg.variant}: pass --depth {found.depth} "
            f"--variant {found.variant}, or other weights"
        ) from None
    if weights.blurpool is not None and weights.blurpool != cfg.blurpool:
        flag, kind = ("--blurpool", "with") if weights.blurpool else ("--no_blurpool", "without")
        raise ConfigError(
            f"--init_weights {path}: weights of a network {kind} BlurPool, another function "
            f"than this run's: pass {flag}"
        )
    state = weights.state_dict
    if weights.num_classes == num_classes:
        model.load_state_dict(state)
        return f"--init_weights: starting from the weights of {path} ({weights.kind})"
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected, (missing, unexpected)
    return (
        f"--init_weights: starting from the weights of {path} ({weights.kind}) but its "
        f"classifier: it has {weights.num_classes} classes, the shards {num_classes}, so fc "
        "starts anew"
    )


def identified(path: Path) -> Weights | None:
    """The network that the weights at `path` are of, whatever its depth; None when they fit
    none of ours."""
    for depth in STAGE_BLOCKS:
        try:
            return read_weights(path, depth, flag="")
        except WeightsError:
            continue
    return None
