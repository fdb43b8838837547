"""Named recipes (--recipe): sets of trainer flag values, each with its source and the
accuracy that source reports. Those accuracies are literature, not measured by this project.
Any flag given on the command line overrides a recipe's value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_LR_PER_256 = 0.1  # Goyal et al.'s linear rule: 0.1 per 256 images
# torchvision's EMA: decay 0.99998 per step, adjusted by batch x steps / epochs (its train.py:
# 1 - min(1, 2e-5 x 1024 x 32 / 600) per update every 32 steps at batch 1024, 600 epochs),
# whose half-life is 16.2 epochs of ImageNet (1,251 steps each): 2.7% of the run.
TORCHVISION_EMA_HALFLIFE_SHARE = (
    math.log(0.5) / math.log(1 - 2e-5 * 1024 * 32 / 600) * 32 / (1_281_167 / 1024) / 600
)


@dataclass(frozen=True)
class Recipe:
    summary: str
    source: str
    literature: str  # what the source reports, as it reports it
    values: dict = field(default_factory=dict)  # flag name -> value; the rest: the defaults
    # the global batch its --lr was tuned for, where the linear rule does not carry it over
    tuned_batch: int | None = None
    # the peak LR per 256 images of global batch when --lr is not given (the linear rule;
    # None: the trainer's 0.1)
    lr_per_256: float | None = None
    # flags set as a share of --epochs unless given (value = share x epochs)
    epoch_shares: dict = field(default_factory=dict)

    def default_lr(self, batch: int) -> float:
        return (self.lr_per_256 or DEFAULT_LR_PER_256) * batch / 256


RECIPES = {
    "seed": Recipe(
        summary="the seed document's recipe: 120 epochs at 224 px, 5 warmup epochs, cosine",
        source="the project's seed documents (the trainer's defaults)",
        literature="76-77% top-1 for ResNet-50 (claimed by the seed documents, unverified)",
    ),
    "fast": Recipe(
        summary="FFCV-style: 40 epochs, train at 160 px ramped to 192 px late in the run, "
        "evaluate at 256 px with flip TTA, LR peaking at epoch 2 then linear to 0, label "
        "smoothing 0.1",
        source="FFCV ImageNet example, rn50_configs/rn50_40_epochs.yaml and train_imagenet.py "
        "(BlurPool included, as there)",
        literature="ResNet-50 77.2% top-1 at 40 epochs (73.8% at 16, 78.4% at 88), 35.6 min on "
        "8 A100, with BlurPool",
        values={
            "epochs": 40,
            "blurpool": True,
            "min_res": 160,
            "max_res": 192,
            "val_res": 256,
            "lr_schedule": "linear",
            "warmup_epochs": 2.0,
            "label_smoothing": 0.1,
            "tta": True,
        },
    ),
    "accurate": Recipe(
        summary="torchvision's recipe of its 80.9% ResNet-50 weights (IMAGENET1K_V2): 600 "
        "epochs, global batch 1024 at LR 0.5 (linear in the batch), 5 warmup epochs, cosine, "
        "weight decay 2e-5, label smoothing 0.1, mixup 0.2 or CutMix 1.0 per batch, "
        "TrivialAugment wide, random erasing 0.1, no colour jitter, train crop 176, evaluation "
        "at 224 from 232, EMA every 32 steps (half-life 2.7% of the run: 16 of 600 epochs); "
        "with --sd 1, pL 0.95 (timm's RSB drop rate 0.05 at the last block); repeated "
        "augmentation x4",
        source="torchvision references/classification (README: the ResNet-50 IMAGENET1K_V2 "
        "command; train.py's EMA adjustment) and its blog 'How to Train State-Of-The-Art "
        "Models Using TorchVision's Latest Primitives' (ablations); timm's ResNet strikes back "
        "for pL",
        literature="ResNet-50 80.858%, ResNet-101 81.886%, ResNet-152 82.284% top-1 "
        "(torchvision's current IMAGENET1K_V2 weights, trained with repeated augmentation "
        "x4); the blog: 80.674% without repeated augmentation (ResNet-50)",
        values={
            "variant": "v1.5",
            "epochs": 600,
            "batch": 1024,
            "warmup_epochs": 5.0,
            "lr_schedule": "cosine",
            "weight_decay": 2e-5,
            "label_smoothing": 0.1,
            "mixup": 0.2,
            "cutmix": 1.0,
            "auto_augment": "ta_wide",
            "random_erase": 0.1,
            "color_jitter": False,
            "image_size": 176,
            "val_res": 224,
            "val_resize": 232,
            "ema": True,
            "ema_every": 32,
            "ema_after_warmup": True,
            "repeated_aug": 4,
            "pL": 0.95,
        },
        lr_per_256=0.5 / 4,
        epoch_shares={"ema_halflife": TORCHVISION_EMA_HALFLIFE_SHARE},
    ),
    "mlperf": Recipe(
        summary="MLPerf Training's ResNet-50 v1.5 as NVIDIA ran it on 8 x H200: LARS with "
        "momentum correction (LR 11.0, weight decay 5e-5), global batch 3,200, 2 warmup epochs "
        "then poly decay (power 2) to 1e-4 over 37 epochs, label smoothing 0.1, crop (area "
        "0.05-1) and flip only, NVIDIA's initialisation, evaluation after epochs 3, 7, 11, "
        "..., stopping at 75.9% top-1",
        source="mlcommons/training_results_v4.0, NVIDIA/results/h200_ngc24.04_mxnet/resnet/"
        "result_*.txt (the logged values) and its config_DGXH100.sh (label smoothing 0.1, LARS "
        "eta 0.001, evaluation offset and period); its MXNet code (common/fit.py: "
        "SGDwFASTLARS's momentum correction; train_imagenet.py: MLPerfInit; "
        "--min-random-area 0.05)",
        literature="75.9% top-1 (MLPerf's target) at epoch 35 in all 5 runs, 12.0 minutes from "
        "run start to stop on 8 x H200",
        values={
            "variant": "v1.5",
            "batch": 3200,
            "optimizer": "lars",
            "lr": 11.0,
            "lars_eta": 0.001,
            "lars_eps": 0.0,
            "momentum": 0.9,
            "weight_decay": 5e-5,
            "warmup_epochs": 2.0,
            "lr_schedule": "poly",
            "lr_poly_power": 2.0,
            "lr_end": 1e-4,
            "label_smoothing": 0.1,
            "epochs": 37,
            "eval_every": 4,
            "eval_offset": 3,
            "target_top1": 75.9,
            "color_jitter": False,
            "crop_area_min": 0.05,
            "lars_momentum_correction": True,
            "init": "mlperf",
        },
        tuned_batch=3200,
    ),
}

# FFCV's 40-epoch ramp (epochs 29 to 34) as fractions of the run: where --start_ramp and
# --end_ramp fall by default for any --epochs.
RAMP_FRACTIONS = (29 / 40, 34 / 40)


def recipe_help() -> str:
    return "; ".join(f"{name}: {r.summary}" for name, r in RECIPES.items())
