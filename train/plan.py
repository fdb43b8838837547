"""--dry_run: the plan of a run before it starts, without reading data or touching a GPU:
epochs and steps, the train resolution and the learning rate over the run, and the training
compute from FLOP counts (forward + backward per image at each resolution, counted by torch
on shapes alone, less the share that batch-mode stochastic depth skips), also relative to the
seed recipe at the same depth."""

from __future__ import annotations

import dataclasses
from functools import cache

from models import survival_probs
from models.flops import skipped_share, training_flops
from train.config import TrainConfig, derive, fitted_warmup_epochs
from train.recipes import RECIPES
from train.schedule import evaluation_due, lr_of, plan_steps, train_resolution
from train.shards import Shards, train_counts


@cache
def flops_per_image(
    depth: int, variant: str, size: int, classes: int, sd: str, pL: float, blurpool: bool
):  # fmt: skip
    """Training FLOPs per image at one resolution, the expected skipped share subtracted."""
    total, branches = training_flops(depth, variant, size, classes, blurpool)
    if sd != "batch":  # per-sample drop path computes every branch
        return total
    return total * (1 - skipped_share(survival_probs(len(branches), pL), total, branches))


def data_counts(shards: Shards | None) -> tuple[int, int, str]:
    """(train images, classes, where they come from): the manifest's, else ImageNet's."""
    images, classes = train_counts(shards)
    if shards is None:
        return images, classes, "ImageNet's count (no shards folder in --data_dir)"
    return images, classes, str(shards.manifest_path)


def run_plan(cfg: TrainConfig, world_size: int, images: int, classes: int) -> dict:
    """Steps, resolution per epoch, LR at milestones and training FLOPs of a run."""
    d = derive(dataclasses.replace(cfg, device="cpu"), 0, world_size, 0)
    plan = plan_steps(cfg, d, images)
    trained = min(images, plan.steps_per_epoch * cfg.batch)  # images per epoch
    resolutions = [train_resolution(d, e) for e in range(cfg.epochs)]
    per_image = [
        flops_per_image(cfg.depth, cfg.variant, r, classes, d.sd_mode, cfg.pL, cfg.blurpool)
        for r in resolutions
    ]
    milestones = sorted({0, plan.warmup_steps, plan.total_steps // 2, plan.total_steps - 1})
    return {
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "images_per_epoch": trained,
        "resolutions": resolutions,
        "lr": {s: lr_of(plan, d.lr, s) for s in milestones if 0 <= s < plan.total_steps},
        "training_flops": sum(trained * f for f in per_image),
        "val_res": d.val_res,
        "val_resize": d.val_resize,
        "micro_batch": d.micro_batch,
        "evaluations": [e + 1 for e in range(cfg.epochs) if evaluation_due(cfg, e)],
    }


def seed_reference(cfg: TrainConfig) -> TrainConfig:
    """The seed recipe at the same depth and variant, without stochastic depth."""
    return TrainConfig(depth=cfg.depth, variant=cfg.variant)


def resolution_ranges(resolutions: list[int]) -> str:
    """'160 px in epochs 1-32, 192 px in epochs 33-40'."""
    parts, start = [], 0
    for e in range(1, len(resolutions) + 1):
        if e == len(resolutions) or resolutions[e] != resolutions[start]:
            parts.append(f"{resolutions[start]} px in epochs {start + 1}-{e}")
            start = e
    return ", ".join(parts)


def epoch_list(epochs: list[int]) -> str:
    """'3, 7, 11, ..., 35, 37' (the first three and the last two of a long list)."""
    if len(epochs) <= 6:
        return ", ".join(str(e) for e in epochs)
    return ", ".join(str(e) for e in epochs[:3]) + ", ..., " + ", ".join(map(str, epochs[-2:]))


def optimizer_words(cfg: TrainConfig) -> str:
    if cfg.optimizer == "lars":
        return (
            f"LARS (eta {cfg.lars_eta:g}, eps {cfg.lars_eps:g}), momentum {cfg.momentum:g}, "
            f"weight decay {cfg.weight_decay:g}"
        )
    nesterov = " (Nesterov)" if cfg.nesterov else ""
    return f"SGD, momentum {cfg.momentum:g}{nesterov}, weight decay {cfg.weight_decay:g}"


def augmentation_words(cfg: TrainConfig) -> str:
    """The train augmentations beyond the crop: 'flip, TrivialAugment wide, ...'."""
    dali = cfg.dali
    words = ["flip"] if dali.flip else []
    words += ["colour jitter"] if dali.color_jitter else []
    if dali.auto_augment == "ta_wide":
        words.append("TrivialAugment wide")
    elif dali.auto_augment == "rand_augment":
        words.append(f"RandAugment ({dali.ra_ops} ops, magnitude {dali.ra_magnitude})")
    words += [f"random erasing {cfg.random_erase:g}"] if cfg.random_erase else []
    mixes = [f"{n} {a:g}" for n, a in (("mixup", cfg.mixup), ("CutMix", cfg.cutmix)) if a]
    words += [" or ".join(mixes) + (" per batch" if len(mixes) == 2 else "")] if mixes else []
    words += [f"label smoothing {cfg.label_smoothing:g}"] if cfg.label_smoothing else []
    return ", ".join(words) or "none"


def print_plan(cfg: TrainConfig, world_size: int, shards: Shards | None) -> int:
    """Print the plan of a run on `shards` (None: ImageNet's counts) whose flags the entry
    point has checked; the exit code."""
    images, classes, source = data_counts(shards)
    plan = run_plan(cfg, world_size, images, classes)
    reference = run_plan(seed_reference(cfg), world_size, images, classes)
    sd = f"stochastic depth {cfg.sd_mode} (pL {cfg.pL})" if cfg.sd else "no stochastic depth"
    sd += ", BlurPool" if cfg.blurpool else ""
    every = f" every {cfg.ema_every} steps" if cfg.ema_every > 1 else ""
    ema = f", EMA weights{every} (half-life {cfg.ema_halflife:.3g} epochs) beside the live ones"
    lrs = ", ".join(
        f"{lr:.4g} at step {step:,} (epoch {step / plan['steps_per_epoch']:.1f})"
        for step, lr in plan["lr"].items()
    )
    ratio = plan["training_flops"] / reference["training_flops"]
    target = f"; stops at the first at {cfg.target_top1:g}% top-1" if cfg.target_top1 else ""
    print(
        f"plan: ResNet-{cfg.depth} ({cfg.variant}), recipe {cfg.recipe}, {sd}\n"
        f"  {cfg.epochs} epochs of {images:,} images ({source}), batch {cfg.batch} over "
        f"{world_size} process(es): {cfg.batch // world_size} images per rank per step, in "
        f"micro-batches of at most {plan['micro_batch']}; {plan['steps_per_epoch']:,} steps per "
        f"epoch (the last one takes the remainder), {plan['total_steps']:,} in all; order "
        f"{cfg.order}{f', each image {cfg.repeated_aug} times' if cfg.repeated_aug > 1 else ''}\n"
        f"  train resolution: {resolution_ranges(plan['resolutions'])}\n"
        f"  augmentation: {augmentation_words(cfg)}\n"
        f"  evaluation: centre crop {plan['val_res']} px, the shorter side resized to "
        f"{plan['val_resize']} px first{', flip TTA' if cfg.tta else ''}"
        f"{ema if cfg.ema else ''}, after epochs "
        f"{epoch_list(plan['evaluations'])}{target}\n"
        f"  optimizer: {optimizer_words(cfg)}\n"
        f"  learning rate ({cfg.lr_schedule}, warmup {fitted_warmup_epochs(cfg):g} epochs): "
        f"{lrs}\n"
        f"  training compute: {plan['training_flops']:.3e} FLOPs (forward + backward, counted "
        f"by torch), {ratio:.2f}x the seed recipe's at this depth ({cfg.depth}: 120 epochs at "
        f"224 px, no stochastic depth: {reference['training_flops']:.3e})\n"
        f"  literature: {RECIPES[cfg.recipe].literature}"
    )
    return 0
