"""The trainer's configuration: one typed dataclass, from which the CLI is generated.

The flags keep the seed's names (--data_dir, --sd, --pL, --batch, ...). The config is read
once and never mutated: derived values (learning rate, per-rank batch, precision, device)
live in `Derived`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields

import torch

from models import SD_MODES, STAGE_BLOCKS, VARIANTS
from train.data import PipelineKnobs

DEFAULT_WARMUP_EPOCHS = 5.0


class ConfigError(Exception):
    """An impossible flag or flag combination, reported before any heavy work."""


def opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    # data and output
    data_dir: str = opt("shards", "shards folder written by `make shards` (not raw ImageNet)")
    out: str = opt("results/imagenet", "output folder: checkpoints, history, summary, TensorBoard")
    # model
    depth: int = opt(50, "ResNet depth", choices=sorted(STAGE_BLOCKS))
    variant: str = opt(
        "preact", "preact (pre-activation) or v1.5 (torchvision's)", choices=VARIANTS
    )
    sd: int = opt(0, "stochastic depth: 1 on, 0 off", choices=[0, 1])
    sd_mode: str = opt(
        "batch",
        "batch: the paper's, one draw per block per step, dropped blocks not computed (faster); "
        "sample: per-sample drop path",
        choices=[m for m in SD_MODES if m != "off"],
    )
    pL: float = opt(0.5, "survival probability of the last block, in (0, 1]")
    # schedule and optimizer
    epochs: int = opt(120, "training epochs")
    batch: int = opt(256, "global batch size, split over ranks (and --accum micro-batches)")
    lr: float | None = opt(None, "peak learning rate (default: 0.1 x batch / 256)")
    warmup_epochs: float | None = opt(
        None,
        f"linear warmup from 0 to the peak LR over this many epochs (default: "
        f"{DEFAULT_WARMUP_EPOCHS:g}, or a quarter of a run shorter than "
        f"{4 * DEFAULT_WARMUP_EPOCHS:g} epochs)",
    )
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum")
    weight_decay: float = opt(1e-4, "weight decay on conv and linear weights (not BN or bias)")
    label_smoothing: float = opt(0.1, "label smoothing of the cross entropy")
    mixup: float = opt(0.0, "mixup alpha: one lambda ~ Beta(alpha, alpha) per batch; 0 = off")
    # speed
    no_mixed_precision: bool = opt(False, "train in float32 (default on a GPU: mixed precision)")
    amp_dtype: str = opt(
        "bf16", "mixed-precision type: bf16, or fp16 with a GradScaler", choices=["bf16", "fp16"]
    )
    channels_last: bool | None = opt(None, "channels_last memory format (default: on a GPU)")
    compile: bool = opt(False, "torch.compile the model")
    accum: int = opt(1, "gradient accumulation: micro-batches per optimizer step")
    checkpoint_activations: bool = opt(False, "recompute block activations in backward (memory)")
    image_size: int = opt(224, "training and validation crop size")
    workers: int = opt(8, "DALI CPU threads per rank")
    cache: bool = opt(False, "copy the shards to RAM disk (/dev/shm) first, when they fit")
    # run control
    seed: int = opt(42, "seed of weights, data order, augmentation and stochastic depth")
    resume: str = opt(
        "auto", "auto: continue from OUT/last.pt if there; none: start over; or a .pt path"
    )
    eval_every: int = opt(1, "validate every N epochs (and after the last)")
    synthetic: bool = opt(False, "random input on the device instead of data: the model alone")
    log_every: int = opt(50, "steps between progress updates, TensorBoard points and NaN checks")
    max_steps_per_epoch: int = opt(
        0, "stop each epoch after this many steps (0: all; for smoke tests)"
    )
    device: str | None = opt(None, "cuda or cpu (default: cuda when there is one)")
    dali: PipelineKnobs = field(default_factory=PipelineKnobs, metadata={"help": "DALI knobs"})


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the environment."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    lr: float
    micro_batch: int  # per rank, per micro-step
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    sd_mode: str  # "off", "batch" or "sample"
    warmup_epochs: float  # --warmup_epochs, or the default fitted into the run


def fitted_warmup_epochs(cfg: TrainConfig) -> float:
    """--warmup_epochs as given, else the default, shortened to a quarter of a short run so
    that the learning rate still decays (a 1-epoch smoke test warms up over 0.25 epochs)."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return min(DEFAULT_WARMUP_EPOCHS, cfg.epochs / 4)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, unless the help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def add_flag(p, name: str, default, kind: str, help: str, choices=None) -> None:
    """One flag in the seed's style: --name VALUE; booleans as --name or --no_name."""
    help = help.replace("%", "%%")  # argparse formats help strings with %
    if kind == "bool" and default:
        p.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"turn off: {help}")
    elif kind == "bool":
        p.add_argument(f"--{name}", action="store_true", help=help)
    elif kind == "bool | None":  # tri-state: None lets the device decide
        p.add_argument(f"--{name}", action="store_const", const=True, default=None, help=help)
        p.add_argument(
            f"--no_{name}", dest=name, action="store_const", const=False, help="turn off"
        )
    else:
        types = {"int": int, "float": float, "str": str, "float | None": float, "str | None": str}
        p.add_argument(f"--{name}", type=types[kind], default=default, choices=choices, help=help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train ResNet-50/101/152 with or without stochastic depth on ImageNet shards "
        "(DALI input, AMP, DDP). One process: python -m train ...; several GPUs: torchrun "
        "--nproc_per_node=N -m train ... Rerunning with the same --out resumes.",
        formatter_class=HelpFormatter,
    )
    for f in fields(TrainConfig):
        if f.name != "dali":
            add_flag(p, f.name, f.default, f.type, f.metadata["help"], f.metadata.get("choices"))
    group = p.add_argument_group("DALI pipeline knobs")
    for f in fields(PipelineKnobs):
        if f.name != "num_threads":  # that one is --workers
            add_flag(group, f.name, f.default, f.type, f.metadata["help"])
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    knob_names = {f.name for f in fields(PipelineKnobs)}
    knobs = {k: args.pop(k) for k in list(args) if k in knob_names}
    knobs["num_threads"] = args["workers"]  # recorded in config.json as what it is
    return TrainConfig(**args, dali=PipelineKnobs(**knobs))


def check(cfg: TrainConfig, world_size: int, other_problems: list[str] | None = None) -> None:
    """Raise ConfigError naming the flag for anything impossible, with every problem found
    (`other_problems`: those found outside the flags, e.g. in --data_dir) in one message."""
    problems = []
    if not 0.0 < cfg.pL <= 1.0:
        problems.append(
            f"--pL {cfg.pL} must be in (0, 1]: the survival probability of the last block"
        )
    if cfg.epochs < 1:
        problems.append(f"--epochs {cfg.epochs} must be at least 1")
    if cfg.batch < 1 or cfg.accum < 1:
        problems.append("--batch and --accum must be positive")
    elif cfg.batch % (world_size * cfg.accum):
        problems.append(
            f"--batch {cfg.batch} is not divisible by ranks x accum = {world_size} x {cfg.accum}: "
            f"choose a multiple of {world_size * cfg.accum}"
        )
    if cfg.lr is not None and cfg.lr <= 0:
        problems.append(f"--lr {cfg.lr} must be positive")
    if cfg.warmup_epochs is not None and not 0 <= cfg.warmup_epochs <= cfg.epochs:
        problems.append(f"--warmup_epochs {cfg.warmup_epochs} must be in [0, --epochs]")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"--label_smoothing {cfg.label_smoothing} must be in [0, 1)")
    if cfg.mixup < 0:
        problems.append(f"--mixup {cfg.mixup} must be >= 0 (0 turns it off)")
    if cfg.weight_decay < 0 or cfg.momentum < 0:
        problems.append("--weight_decay and --momentum must be >= 0")
    if cfg.nesterov and cfg.momentum == 0:
        problems.append("--nesterov needs --momentum > 0")
    if cfg.eval_every < 1 or cfg.log_every < 1 or cfg.workers < 1:
        problems.append("--eval_every, --log_every and --workers must be positive")
    if cfg.image_size < 32 or cfg.image_size % 32:
        problems.append(f"--image_size {cfg.image_size} must be a multiple of 32, at least 32")
    if cfg.max_steps_per_epoch < 0:
        problems.append("--max_steps_per_epoch must be >= 0")
    if cfg.device not in (None, "cpu") and not str(cfg.device).startswith("cuda"):
        problems.append(f"--device {cfg.device}: use cuda or cpu")
    if str(cfg.device or "").startswith("cuda") and not torch.cuda.is_available():
        problems.append("--device cuda: no CUDA GPU is visible")
    if cfg.resume not in ("auto", "none") and not os.path.isfile(cfg.resume):
        problems.append(f"--resume {cfg.resume}: no such checkpoint file (or use auto / none)")
    problems += other_problems or []
    if problems:
        raise ConfigError("\n  ".join(["cannot start:", *problems]))


def derive(cfg: TrainConfig, rank: int, world_size: int, local_rank: int) -> Derived:
    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    on_gpu = device.type == "cuda"
    amp = on_gpu and not cfg.no_mixed_precision  # CPU runs in float32
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    if amp and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16  # pre-Ampere GPUs: fp16 with a GradScaler
    return Derived(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        lr=cfg.lr if cfg.lr is not None else 0.1 * cfg.batch / 256,
        micro_batch=cfg.batch // (world_size * cfg.accum),
        amp=amp,
        amp_dtype=amp_dtype,
        channels_last=on_gpu if cfg.channels_last is None else cfg.channels_last,
        sd_mode=cfg.sd_mode if cfg.sd else "off",
        warmup_epochs=fitted_warmup_epochs(cfg),
    )


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    """The config recorded in a checkpoint or config.json; fields that this version does not
    know (a checkpoint of another version) are left out."""
    known = {f.name for f in fields(TrainConfig)} - {"dali"}
    knobs = {f.name for f in fields(PipelineKnobs)}
    dali = PipelineKnobs(**{k: v for k, v in d.get("dali", {}).items() if k in knobs})
    return TrainConfig(**{k: v for k, v in d.items() if k in known}, dali=dali)
