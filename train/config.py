"""The trainer's configuration: one typed dataclass, from which the CLI is generated.

The flags keep the seed's names (--data_dir, --sd, --pL, --batch, ...). Each field is one
flag's declaration: its type (read from the annotation), default and help; the model's flags
(--depth, --variant, --sd, --sd_mode, --pL, --blurpool, --image_size) are declared in
models/flags.py, which `python -m models` shares. Other commands that take a trainer flag add
it from here (`train_flags`), so it has the same name, default, choices and help everywhere.
The config is read once and never mutated: derived values (learning rate, per-rank batch,
precision, device) live in `Derived`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields
from functools import cache

import torch

from models import INITS
from models.flags import BLURPOOL, DEPTH, IMAGE_SIZE, PL, SD, SD_MODE, VARIANT, Flag, FlagParser
from train.data import DEFAULT_THREADS, PipelineKnobs, dali_threads, default_val_resize
from train.order import ORDERS
from train.recipes import RAMP_FRACTIONS, RECIPES, recipe_help

DEFAULT_WARMUP_EPOCHS = 5.0
# A ResNet-50 last.pt (205 MB) saves in 0.6 s on this project's CPU machine (make
# bench-checkpoint): every 10 minutes that is 0.1% of the run, 0.3% at 100 MB/s.
DEFAULT_CHECKPOINT_MINUTES = 10.0
LR_SCHEDULES = ("cosine", "linear", "step", "poly")
OPTIMIZERS = ("sgd", "lars")
POLY_POWER, POLY_END_LR = 2.0, 1e-4  # --lr_schedule poly's defaults: MLPerf ResNet-50's
RESOLUTION_STEP = 32  # progressive resizing rounds to multiples of this (FFCV's rule)


class ConfigError(Exception):
    """An impossible flag or flag combination, reported before any heavy work."""


def opt(default, help: str, choices=None, trains: bool = True):
    """A trainer flag declared by its field: its type is the field's annotation. `trains`:
    whether it changes what is trained (False: where and how fast the run reads, writes and
    logs), which a resume must not change unnoticed."""
    return field(default=default, metadata={"help": help, "choices": choices, "trains": trains})


def declared(flag: Flag):
    """A field whose flag is declared elsewhere (the model's, in models/flags.py)."""
    return field(default=flag.default, metadata={"flag": flag})


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = opt(
        "seed", f"named recipe, any flag given overrides its values: {recipe_help()}",
        choices=tuple(RECIPES),
    )  # fmt: skip
    # data and output
    data_dir: str = opt(
        "shards", "shards folder written by `make shards` (not raw ImageNet)", trains=False
    )
    out: str = opt(
        "results/imagenet",
        "output folder: checkpoints, history, summary, TensorBoard",
        trains=False,
    )
    # model
    depth: int = declared(DEPTH)
    variant: str = declared(VARIANT)
    sd: int = declared(SD)
    sd_mode: str = declared(SD_MODE)
    pL: float = declared(PL)
    blurpool: bool = declared(BLURPOOL)
    init: str = opt(
        "default",
        "initial weights: default, He normal (fan_out) convolutions and the last BN of each "
        "block at 0 (Goyal et al.; the pre-activation blocks' last conv), PyTorch's Linear "
        "init; mlperf, NVIDIA's MLPerf ResNet-50: He normal (fan_in), every BN weight 1, the "
        "classifier N(0, 0.01) with bias 0",
        choices=INITS,
    )
    init_weights: str | None = opt(
        None,
        "start a new run from these weights instead of --init's: a torchvision resnet50/101/"
        "152 state_dict, an export of train.export, or a checkpoint's or run folder's best "
        "weights (not its optimizer or data position); the classifier (fc) starts anew when "
        "the class count differs (fine-tuning); weights of another network are refused",
    )
    # schedule and optimizer
    epochs: int = opt(120, "training epochs")
    batch: int = opt(
        256,
        "global batch: images per step over all processes (training: split over the ranks, "
        "and over --accum micro-batches)",
    )
    lr: float | None = opt(
        None,
        "peak learning rate (default with sgd: 0.1 x batch / 256, or the recipe's own per 256 "
        "images; lars needs it given)",
    )
    warmup_epochs: float | None = opt(
        None,
        f"linear warmup from 0 to the peak LR over this many epochs (default: "
        f"{DEFAULT_WARMUP_EPOCHS:g}, or a quarter of a run shorter than "
        f"{4 * DEFAULT_WARMUP_EPOCHS:g} epochs)",
    )
    lr_schedule: str = opt(
        "cosine",
        "after warmup: cosine (to 1e-6 at the last step), linear (to 0 at the last step, "
        "FFCV's), step (x0.1 at each of --lr_milestones, torchvision's reference) or poly "
        "(to --lr_end as (1 - progress) ** --lr_poly_power, MLPerf's)",
        choices=LR_SCHEDULES,
    )
    lr_poly_power: float | None = opt(
        None, f"poly schedule: the power of the decay (default {POLY_POWER:g}, MLPerf's)"
    )
    lr_end: float | None = opt(
        None, f"poly schedule: the LR the decay ends at (default {POLY_END_LR:g}, MLPerf's)"
    )
    lr_milestones: str | None = opt(
        None,
        "step schedule: epochs where the LR is multiplied by 0.1, comma-separated (default: "
        "1/3 and 2/3 of the epochs after warmup)",
    )
    optimizer: str = opt(
        "sgd",
        "sgd: SGD with momentum in torch's fused kernel; lars: layer-wise trust ratios as "
        "MLPerf's ResNet-50 reference (large global batches; needs --lr)",
        choices=OPTIMIZERS,
    )
    momentum: float = opt(0.9, "momentum (SGD and LARS)")
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    lars_eta: float = opt(0.001, "LARS: the trust coefficient eta")
    lars_eps: float = opt(0.0, "LARS: epsilon in the trust ratio's denominator")
    lars_momentum_correction: bool = opt(
        False,
        "LARS: multiply the momentum of conv and linear weights by lr_t / lr_{t-1} (Goyal et "
        "al.'s correction, NVIDIA's MLPerf sgdwfastlars: the LR then acts after the momentum); "
        "off: the LR enters the buffer first, as the mlcommons reference's LARS",
    )
    weight_decay: float = opt(1e-4, "weight decay on conv and linear weights (not BN or bias)")
    label_smoothing: float = opt(0.1, "label smoothing of the cross entropy")
    mixup: float = opt(0.0, "mixup alpha: one lambda ~ Beta(alpha, alpha) per batch; 0 = off")
    cutmix: float = opt(
        0.0,
        "CutMix alpha: a box of another image of the batch pasted, its area 1 - lambda, "
        "lambda ~ Beta(alpha, alpha) per batch, corrected to the box as clipped; with --mixup, "
        "one of the two per batch, 50/50; 0 = off",
    )
    random_erase: float = opt(
        0.0,
        "probability per image of erasing one rectangle (2-33% of the area, aspect 0.3-3.3) "
        "to 0 after normalisation, before mixing: torchvision's RandomErasing; 0 = off",
    )
    # speed
    mixed_precision: bool = opt(
        True, "on a GPU, autocast to --amp_dtype (the CPU computes in float32 always)"
    )
    amp_dtype: str = opt(
        "bf16", "mixed-precision type: bf16, or fp16 with a GradScaler", choices=("bf16", "fp16")
    )
    channels_last: bool | None = opt(
        None, "channels_last memory format (default: on a GPU)", trains=False
    )
    compile: bool = opt(False, "torch.compile the model", trains=False)
    accum: int = opt(
        1,
        "micro-batches per optimizer step on the world size the run starts on: its micro-batch "
        "is then batch / (ranks x accum), which --micro_batch sets instead",
    )
    micro_batch: int | None = opt(
        None,
        "at most this many samples per rank per forward pass: each rank's share of a step "
        "(the --batch samples of the step, split over the ranks) is accumulated in as few "
        "micro-batches as that takes, whatever the world size (default: batch / (ranks x "
        "--accum) on the world size the run starts on; a resume keeps the run's)",
    )
    order: str = opt(
        "global",
        "the train order of every epoch, the same on any number of ranks: global, a "
        "permutation of every sample (local disks, --cache); blocks, the tars permuted and "
        "the samples shuffled within windows of a few tars (network storage)",
        choices=ORDERS,
    )
    repeated_aug: int = opt(
        1,
        "repeated augmentation (torchvision's RASampler, --ra-reps): an epoch holds ceil(N / "
        "K) distinct images K times each, the copies in the same optimizer step, each "
        "augmented by itself (--batch must be a multiple of K); 1: off",
    )
    checkpoint_activations: bool = opt(False, "recompute block activations in backward (memory)")
    image_size: int = declared(IMAGE_SIZE)
    min_res: int | None = opt(
        None,
        "progressive resizing: train at this resolution first (FFCV's rule: min_res up to "
        "--start_ramp, --max_res from --end_ramp, linear between, rounded to a multiple of 32; "
        "default: off, --image_size throughout)",
    )
    max_res: int | None = opt(
        None, "progressive resizing: the last resolution (default: --image_size)"
    )
    start_ramp: int | None = opt(
        None,
        f"progressive resizing: the epoch (counted from 0) after which the ramp starts "
        f"(default: {RAMP_FRACTIONS[0]:.3g} of --epochs, FFCV's 29 of 40)",
    )
    end_ramp: int | None = opt(
        None,
        f"progressive resizing: the epoch from which --max_res is used (default: "
        f"{RAMP_FRACTIONS[1]:.3g} of --epochs, FFCV's 34 of 40)",
    )
    val_res: int | None = opt(
        None,
        "evaluation centre-crop size; the shorter side is resized to val_res / 0.875 first "
        "(default: --image_size)",
    )
    val_resize: int | None = opt(
        None,
        "evaluation: the shorter side is resized to this before the centre crop (default: "
        "val_res / 0.875, 256 for 224; torchvision's 80.9% weights: 232 for 224)",
    )
    tta: bool = opt(False, "evaluation averages the logits of each image and its mirror image")
    ema: bool = opt(
        False,
        "the exponential moving average of the weights: the trainer keeps it and evaluates it "
        "beside the live weights; train.evaluate, train.export and train.predict take a "
        "checkpoint's average (--ema) or live weights (--no_ema) instead of the ones its run "
        "scored best with",
    )
    ema_halflife: float = opt(
        1.0, "--ema: half-life of the average in epochs (independent of batch size and GPUs)"
    )
    ema_after_warmup: bool = opt(
        False,
        "--ema: during the LR warmup each update of the average copies the live weights "
        "(torchvision's reset of the average while epoch < its warmup epochs); the averaging "
        "starts with the first update after the warmup",
    )
    ema_every: int = opt(
        1,
        "--ema: update the average every N optimizer steps (torchvision: 32), each update "
        "worth N steps' decay, so that --ema_halflife alone sets what is averaged",
    )
    workers: int | None = opt(
        None,
        f"DALI CPU threads per process (default: the machine's CPU cores, at most "
        f"{DEFAULT_THREADS})",
        trains=False,
    )
    cache: bool = opt(
        False, "copy the shards to RAM disk (/dev/shm) first, when they fit", trains=False
    )
    # run control
    seed: int = opt(42, "seed of weights, data order, augmentation and stochastic depth")
    resume: str = opt(
        "auto",
        "auto: continue from OUT/last.pt if there; none: start over; or a .pt path",
        trains=False,
    )
    eval_every: int = opt(1, "validate every N epochs (and after the last)")
    eval_offset: int | None = opt(
        None,
        "validate first after this many epochs, then every --eval_every (default: "
        "--eval_every; MLPerf: 3 with --eval_every 4, after epochs 3, 7, 11, ...)",
    )
    target_top1: float | None = opt(
        None,
        "stop at the first evaluation whose top-1 (percent; live or EMA weights, the better) "
        "reaches this; the summary records its epoch and the time to it (MLPerf: 75.9)",
    )
    checkpoint_every_minutes: float = opt(
        DEFAULT_CHECKPOINT_MINUTES,
        "also save last.pt mid-epoch, at the first log point this many minutes after the last "
        "save, so that a kill -9 loses at most about this much (0: only at the end of each "
        "epoch and on SIGTERM; a ResNet-50 save takes about 0.6 s: make bench-checkpoint)",
        trains=False,
    )
    dist_timeout_minutes: float = opt(
        30.0,
        "several ranks: a peer that does not answer a collective for this long (hung, "
        "stopped, its node gone) ends the run with an error, and under torchrun "
        "--max_restarts the group restarts and resumes from last.pt; rank 0's --cache copy "
        "must fit in it too",
        trains=False,
    )
    synthetic: bool = opt(False, "random input on the device instead of data: the model alone")
    record_samples: bool = opt(
        False,
        "write OUT/samples/epoch-NNN.txt: a line per optimizer step trained, the step and the "
        "keys of its samples over every rank, sorted (to audit what a run saw, and for tests)",
        trains=False,
    )
    log_every: int = opt(
        50,
        "optimizer steps between log points: progress, TensorBoard, NaN checks, and the only "
        "moments a stop (SIGTERM, Ctrl-C) or a time-based save happens",
        trains=False,
    )
    max_steps_per_epoch: int = opt(
        0, "stop each epoch after this many steps (0: all; for smoke tests)"
    )
    device: str | None = opt(None, "cuda or cpu (default: cuda when there is one)", trains=False)
    dry_run: bool = opt(
        False,
        "print the plan (resolutions, LR, training compute) and exit: reads no data",
        trains=False,
    )
    allow_changes: bool = opt(
        False,
        "resume although flags that change what is trained differ from the run's (a run "
        "folder holds one run: without it such a resume is refused); each change is recorded "
        "(epoch, step, flag, old, new) in config.json and the summary",
        trains=False,
    )
    dali: PipelineKnobs = field(default_factory=PipelineKnobs, metadata={"help": "DALI knobs"})


@dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the environment."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    lr: float
    micro_batch: int  # at most, per rank and forward pass: --micro_batch, or the run's
    workers: int  # DALI CPU threads of this process
    amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    sd_mode: str  # "off", "batch" or "sample"
    warmup_epochs: float  # --warmup_epochs, or the default fitted into the run
    min_res: int  # train resolution: min_res up to start_ramp, max_res from end_ramp
    max_res: int  # (both --image_size without progressive resizing)
    start_ramp: int
    end_ramp: int
    val_res: int
    val_resize: int  # the shorter side before the centre crop
    lr_milestones: tuple[float, ...]  # epochs, for the step schedule


def fitted_warmup_epochs(cfg: TrainConfig) -> float:
    """--warmup_epochs as given, else the default, shortened to a quarter of a short run so
    that the learning rate still decays (a 1-epoch smoke test warms up over 0.25 epochs)."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return min(DEFAULT_WARMUP_EPOCHS, cfg.epochs / 4)


def flag_type(annotation) -> type:
    """int for `int` and `int | None`: the type a flag's text converts to."""
    if isinstance(annotation, types.UnionType):
        (kind,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kind
    return annotation


def field_flags(cls) -> list[Flag]:
    """The flags of a dataclass's fields (TrainConfig's, PipelineKnobs'), in field order: a
    field's own declaration (help, choices, its annotated type), or the one it names."""
    hints = typing.get_type_hints(cls)
    flags = []
    for f in fields(cls):
        if f.name == "dali":
            continue
        flag = f.metadata.get("flag")
        if flag is None:
            choices = f.metadata.get("choices")
            kind = flag_type(hints[f.name])
            flag = Flag(f.name, kind, f.default, f.metadata["help"], choices and tuple(choices))
        elif (flag.type, flag.default) != (flag_type(hints[f.name]), f.default):
            raise TypeError(f"{cls.__name__}.{f.name} does not match its flag --{flag.name}")
        flags.append(flag)
    return flags


@cache
def train_flags() -> dict[str, Flag]:
    """Every trainer flag by name, the DALI knobs included: what other commands add."""
    return {f.name: f for f in field_flags(TrainConfig) + field_flags(PipelineKnobs)}


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m train",
        usage="python -m train [--flag VALUE ...]",
        description="Train ResNet-50/101/152 with or without stochastic depth on ImageNet shards "
        "(DALI input, AMP, DDP). One process: python -m train ...; several GPUs: torchrun "
        "--nproc_per_node=N -m train ... Rerunning with the same --out resumes.",
    )
    p.add(*field_flags(TrainConfig))
    p.add(*field_flags(PipelineKnobs), group=p.add_argument_group("DALI pipeline knobs"))
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The flags given, on top of the chosen recipe's values, on top of the defaults."""
    cfg, contradictions = parse_flags(argv)
    if contradictions:
        raise ConfigError("\n  ".join(["cannot start:", *contradictions]))
    return cfg


def parse_flags(argv: list[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The config of parse_config, and the contradictions among the flags given (reported
    with the config's other problems by `check`)."""
    parser = build_parser()
    parser.report_contradictions_later = True
    args = vars(parser.parse_args(argv))
    recipe = RECIPES[args["recipe"]]
    for name, value in recipe.values.items():
        if name not in parser.given:
            args[name] = value
    for name, share in recipe.epoch_shares.items():  # shares of the run: value = share x epochs
        if name not in parser.given:
            args[name] = share * args["epochs"]
    knobs = {f.name: args.pop(f.name) for f in fields(PipelineKnobs)}
    cfg = TrainConfig(**args, dali=PipelineKnobs(**knobs))
    both = ["--accum and --micro_batch both set the micro-batch: give one"]
    both = both if {"accum", "micro_batch"} <= parser.given else []
    return cfg, parser.contradictions + both + given_for_nothing(cfg, parser.given)


def given_for_nothing(cfg: TrainConfig, given: frozenset[str]) -> list[str]:
    """Flags given for a feature that is off: they would change nothing, which is surely not
    what was meant (a recipe's own values for them do not count)."""
    unused = {
        "stochastic depth is off (--sd 0): add --sd 1": (not cfg.sd, ("pL", "sd_mode")),
        "the EMA is off: add --ema": (not cfg.ema, ("ema_halflife", "ema_after_warmup")),
        "the optimizer is SGD: add --optimizer lars": (
            cfg.optimizer != "lars",
            ("lars_eta", "lars_eps", "lars_momentum_correction"),
        ),
    }
    problems = []
    for why, (off, flags) in unused.items():
        named = [f"--{f}" for f in flags if f in given and off]
        if named:
            problems.append(f"{', '.join(named)} would change nothing: {why} or drop it")
    return problems


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
    problems += batch_problems(cfg, world_size)
    if cfg.lr is not None and cfg.lr <= 0:
        problems.append(f"--lr {cfg.lr} must be positive")
    if cfg.warmup_epochs is not None and not 0 <= cfg.warmup_epochs <= cfg.epochs:
        problems.append(f"--warmup_epochs {cfg.warmup_epochs} must be in [0, --epochs]")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"--label_smoothing {cfg.label_smoothing} must be in [0, 1)")
    problems += augmentation_problems(cfg)
    if cfg.weight_decay < 0 or cfg.momentum < 0:
        problems.append("--weight_decay and --momentum must be >= 0")
    if cfg.nesterov and cfg.momentum == 0:
        problems.append("--nesterov needs --momentum > 0")
    if cfg.eval_every < 1 or cfg.log_every < 1 or (cfg.workers or 1) < 1:
        problems.append("--eval_every, --log_every and --workers must be positive")
    problems += resolution_problems(cfg)
    problems += schedule_problems(cfg)
    problems += large_batch_problems(cfg)
    if cfg.ema_halflife <= 0:
        problems.append(
            f"--ema_halflife {cfg.ema_halflife} must be > 0 epochs (a decay in (0, 1) per step)"
        )
    if cfg.ema_every < 1:
        problems.append(f"--ema_every {cfg.ema_every} must be at least 1 (optimizer steps)")
    elif cfg.ema_every > 1 and not cfg.ema:
        problems.append(f"--ema_every {cfg.ema_every} is for --ema, which is off: add --ema")
    if cfg.max_steps_per_epoch < 0:
        problems.append("--max_steps_per_epoch must be >= 0")
    if cfg.checkpoint_every_minutes < 0:
        problems.append("--checkpoint_every_minutes must be >= 0 (0 turns it off)")
    if cfg.dist_timeout_minutes <= 0:
        problems.append("--dist_timeout_minutes must be > 0")
    if cfg.device not in (None, "cpu") and not str(cfg.device).startswith("cuda"):
        problems.append(f"--device {cfg.device}: use cuda or cpu")
    if str(cfg.device or "").startswith("cuda") and not torch.cuda.is_available():
        problems.append("--device cuda: no CUDA GPU is visible")
    if cfg.resume not in ("auto", "none") and not os.path.isfile(cfg.resume):
        problems.append(f"--resume {cfg.resume}: no such checkpoint file (or use auto / none)")
    problems += other_problems or []
    if problems:
        raise ConfigError("\n  ".join(["cannot start:", *problems]))


def batch_problems(cfg: TrainConfig, world_size: int) -> list[str]:
    """The global batch, the micro-batch and the repeated augmentation."""
    if cfg.batch < 1 or cfg.accum < 1 or (cfg.micro_batch is not None and cfg.micro_batch < 1):
        return ["--batch, --accum and --micro_batch must be positive"]
    problems = []
    if cfg.batch < 2 * world_size:
        problems.append(
            f"--batch {cfg.batch} gives some of the {world_size} ranks fewer than 2 samples a "
            f"step (batch norm needs 2): choose at least {2 * world_size}"
        )
    if cfg.micro_batch is None and cfg.batch < world_size * cfg.accum:
        problems.append(
            f"--batch {cfg.batch} over {world_size} ranks x --accum {cfg.accum} leaves no "
            "sample per micro-batch: lower --accum"
        )
    if cfg.repeated_aug < 1 or cfg.batch % cfg.repeated_aug:
        problems.append(
            f"--repeated_aug {cfg.repeated_aug} must be at least 1 and divide --batch "
            f"{cfg.batch} (the copies of an image share a step)"
        )
    return problems


def data_problems(cfg: TrainConfig, shards) -> list[str]:
    """What the shards rule out: a global batch larger than the train set (one step would
    hold the whole epoch and still come short)."""
    if shards is None or cfg.synthetic or cfg.batch <= shards.num_samples("train"):
        return []
    return [
        f"--batch {cfg.batch} is more than the {shards.num_samples('train'):,} train images of "
        f"{shards.folder}: an optimizer step would need more than the whole epoch; choose a "
        "--batch of at most that"
    ]


def resolution_problems(cfg: TrainConfig) -> list[str]:
    problems = []
    # Progressive resizing rounds to multiples of RESOLUTION_STEP; a fixed crop is any size
    # (torchvision's 80.9% recipe trains at 176).
    ramp = ("min_res", "max_res") + (("image_size",) if cfg.min_res and not cfg.max_res else ())
    for flag in ramp:
        value = getattr(cfg, flag)
        if value is not None and (value < RESOLUTION_STEP or value % RESOLUTION_STEP):
            problems.append(
                f"--{flag} {value} must be a multiple of {RESOLUTION_STEP}, at least "
                f"{RESOLUTION_STEP} (progressive resizing's steps)"
            )
    for flag in ("image_size", "val_res"):
        value = getattr(cfg, flag)
        if value is not None and value < 32:
            problems.append(f"--{flag} {value} must be at least 32 (any size from 32 on)")
    val_res = cfg.val_res or cfg.image_size
    if cfg.val_resize is not None and cfg.val_resize < val_res:
        problems.append(
            f"--val_resize {cfg.val_resize} is below the centre crop --val_res {val_res}: the "
            "shorter side must be at least the crop (torchvision's: 232 for 224)"
        )
    if cfg.min_res is None:
        given = [f for f in ("max_res", "start_ramp", "end_ramp") if getattr(cfg, f) is not None]
        if given:
            problems.append(
                f"--{', --'.join(given)} belong to progressive resizing, which --min_res turns on"
            )
        return problems
    max_res = cfg.max_res if cfg.max_res is not None else cfg.image_size
    if cfg.min_res > max_res:
        problems.append(f"--min_res {cfg.min_res} is above --max_res {max_res}: swap them")
    start, end = ramp_epochs(cfg)
    if not 0 <= start <= end <= cfg.epochs:
        problems.append(
            f"--start_ramp {start} and --end_ramp {end} must satisfy 0 <= start_ramp <= "
            f"end_ramp <= --epochs {cfg.epochs}"
        )
    return problems


def augmentation_problems(cfg: TrainConfig) -> list[str]:
    problems = []
    for flag in ("mixup", "cutmix"):
        if getattr(cfg, flag) < 0:
            problems.append(f"--{flag} {getattr(cfg, flag):g} must be >= 0 (0 turns it off)")
    if not 0 <= cfg.random_erase <= 1:
        problems.append(f"--random_erase {cfg.random_erase:g} must be in [0, 1] (a probability)")
    if not 0 <= cfg.dali.ra_magnitude <= 30 or cfg.dali.ra_ops < 1:
        problems.append(
            f"--ra_ops {cfg.dali.ra_ops} must be >= 1 and --ra_magnitude "
            f"{cfg.dali.ra_magnitude} in 0..30 (31 magnitude bins)"
        )
    return problems


def schedule_problems(cfg: TrainConfig) -> list[str]:
    if cfg.lr_milestones is None:
        return []
    if cfg.lr_schedule != "step":
        return [f"--lr_milestones is for --lr_schedule step, not {cfg.lr_schedule}"]
    try:
        milestones = parse_milestones(cfg.lr_milestones)
    except ValueError:
        return [
            f"--lr_milestones {cfg.lr_milestones!r}: give epochs separated by commas, e.g. 30,60"
        ]
    if list(milestones) != sorted(set(milestones)) or not all(
        0 < m < cfg.epochs for m in milestones
    ):
        return [
            f"--lr_milestones {cfg.lr_milestones}: epochs must increase and lie between 0 and "
            f"--epochs {cfg.epochs}"
        ]
    return []


def large_batch_problems(cfg: TrainConfig) -> list[str]:
    """LARS, the poly schedule's options, --eval_offset, --target_top1, and a recipe tuned
    for one global batch."""
    problems = []
    if cfg.optimizer == "lars" and cfg.lr is None:
        problems.append(
            "--optimizer lars needs --lr: LARS's learning rate does not follow SGD's 0.1 x "
            "batch / 256 (MLPerf's: 11.0 at batch 3,200, --recipe mlperf)"
        )
    if cfg.optimizer == "lars" and cfg.nesterov:
        problems.append("--nesterov is for --optimizer sgd (MLPerf's LARS has none)")
    if cfg.lars_eta <= 0 or cfg.lars_eps < 0:
        problems.append(
            f"--lars_eta {cfg.lars_eta:g} must be > 0 and --lars_eps {cfg.lars_eps:g} >= 0"
        )
    for flag in ("lr_poly_power", "lr_end"):
        if getattr(cfg, flag) is not None and cfg.lr_schedule != "poly":
            problems.append(f"--{flag} is for --lr_schedule poly, not {cfg.lr_schedule}")
    if cfg.lr_poly_power is not None and cfg.lr_poly_power <= 0:
        problems.append(f"--lr_poly_power {cfg.lr_poly_power:g} must be > 0")
    if cfg.lr_end is not None and not (cfg.lr_end >= 0 and (cfg.lr is None or cfg.lr_end < cfg.lr)):
        problems.append(f"--lr_end {cfg.lr_end:g} must be >= 0 and below the peak --lr")
    if cfg.eval_offset is not None and cfg.eval_offset < 1:
        problems.append(f"--eval_offset {cfg.eval_offset} must be at least 1 (epochs)")
    if cfg.target_top1 is not None and not 0 < cfg.target_top1 <= 100:
        problems.append(f"--target_top1 {cfg.target_top1:g} must be in (0, 100] (percent)")
    tuned = RECIPES[cfg.recipe].tuned_batch
    if tuned and cfg.batch != tuned and cfg.lr == RECIPES[cfg.recipe].values.get("lr"):
        problems.append(
            f"--recipe {cfg.recipe}: its --lr {cfg.lr:g} is tuned for global batch {tuned:,}; "
            f"for --batch {cfg.batch} give its own --lr (MLPerf lets each global batch have "
            "its own LARS learning rate; the linear rule does not carry it over)"
        )
    return problems


def parse_milestones(text: str) -> tuple[float, ...]:
    return tuple(float(m) for m in text.split(",") if m.strip())


def step_milestones(epochs: int, warmup_epochs: float) -> tuple[float, float]:
    """The step schedule's default milestones (epochs): 1/3 and 2/3 of the run after warmup."""
    after = epochs - warmup_epochs
    return warmup_epochs + after / 3, warmup_epochs + 2 * after / 3


def ramp_epochs(cfg: TrainConfig) -> tuple[int, int]:
    """(start_ramp, end_ramp) as given, else at FFCV's fractions of the run."""
    start = cfg.start_ramp if cfg.start_ramp is not None else round(RAMP_FRACTIONS[0] * cfg.epochs)
    end = cfg.end_ramp if cfg.end_ramp is not None else round(RAMP_FRACTIONS[1] * cfg.epochs)
    return start, end


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
    amp = on_gpu and cfg.mixed_precision  # CPU runs in float32
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    if amp and amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16  # pre-Ampere GPUs: fp16 with a GradScaler
    warmup = fitted_warmup_epochs(cfg)
    start, end = ramp_epochs(cfg) if cfg.min_res else (0, 0)
    milestones = ()
    if cfg.lr_schedule == "step":
        milestones = (
            parse_milestones(cfg.lr_milestones)
            if cfg.lr_milestones
            else step_milestones(cfg.epochs, warmup)
        )
    return Derived(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        lr=cfg.lr if cfg.lr is not None else RECIPES[cfg.recipe].default_lr(cfg.batch),
        micro_batch=cfg.micro_batch or max(1, cfg.batch // (world_size * cfg.accum)),
        workers=dali_threads(cfg.workers),
        amp=amp,
        amp_dtype=amp_dtype,
        channels_last=on_gpu if cfg.channels_last is None else cfg.channels_last,
        sd_mode=cfg.sd_mode if cfg.sd else "off",
        warmup_epochs=warmup,
        min_res=cfg.min_res or cfg.image_size,
        max_res=(cfg.max_res or cfg.image_size) if cfg.min_res else cfg.image_size,
        start_ramp=start,
        end_ramp=end,
        val_res=cfg.val_res or cfg.image_size,
        val_resize=cfg.val_resize or default_val_resize(cfg.val_res or cfg.image_size),
        lr_milestones=milestones,
    )


def not_training() -> frozenset[str]:
    """The flags that do not change what is trained: where and how fast a run reads,
    writes and logs (the DALI knobs by their own names)."""
    return frozenset(
        f.name
        for cls in (TrainConfig, PipelineKnobs)
        for f in fields(cls)
        if not f.metadata.get("trains", True)
    )


def flat(config: dict) -> dict:
    """A config dict (to_dict's) with the DALI knobs beside the other flags."""
    return {k: v for k, v in config.items() if k != "dali"} | config["dali"]


def nested(values: dict) -> dict:
    """`flat`'s inverse: the DALI knobs back under "dali"."""
    knobs = {f.name for f in fields(PipelineKnobs)}
    return {k: v for k, v in values.items() if k not in knobs} | {
        "dali": {k: v for k, v in values.items() if k in knobs}
    }


def changed_flags(recorded: dict, cfg: TrainConfig) -> list[dict]:
    """The flags that change what is trained and differ between a run's recorded config
    (to_dict's) and `cfg`: [{"flag", "old", "new"}], in field order."""
    old, new, skip = flat(recorded), flat(to_dict(cfg)), not_training()
    differ = [k for k, v in new.items() if k not in skip and old[k] != v]
    return [{"flag": k, "old": old[k], "new": new[k]} for k in differ]


def change_words(changes: list[dict]) -> str:
    """'--lr 0.1 (now 0.5), --image_size 224 (now 64)'."""
    return ", ".join(f"--{c['flag']} {c['old']} (now {c['new']})" for c in changes)


def changed_since(config: dict, changes: list[dict]) -> dict:
    """The config a run trains with now: the one it started with, each change applied."""
    values = flat(config)
    for change in changes:
        values[change["flag"]] = change["new"]
    return nested(values)


def started_with(config: dict, changes: list[dict]) -> dict:
    """The config a run started with: `config` with each recorded change undone."""
    values = flat(config)
    for change in reversed(changes):
        values[change["flag"]] = change["old"]
    return nested(values)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    """The config recorded in a checkpoint or config.json (of this checkpoint format)."""
    return TrainConfig(
        **{k: v for k, v in d.items() if k != "dali"}, dali=PipelineKnobs(**d["dali"])
    )
