"""Named recipes (--recipe): sets of trainer flag values, each with its source and the
accuracy that source reports. Those accuracies are literature, not measured by this project.
Any flag given on the command line overrides a recipe's value."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    summary: str
    source: str
    literature: str  # what the source reports, as it reports it
    values: dict = field(default_factory=dict)  # flag name -> value; the rest: the defaults


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
        "(without its BlurPool)",
        literature="ResNet-50 77.2% top-1 at 40 epochs (73.8% at 16, 78.4% at 88), 35.6 min on "
        "8 A100, with BlurPool",
        values={
            "epochs": 40,
            "min_res": 160,
            "max_res": 192,
            "val_res": 256,
            "lr_schedule": "linear",
            "warmup_epochs": 2.0,
            "label_smoothing": 0.1,
            "tta": True,
        },
    ),
}

# FFCV's 40-epoch ramp (epochs 29 to 34) as fractions of the run: where --start_ramp and
# --end_ramp fall by default for any --epochs.
RAMP_FRACTIONS = (29 / 40, 34 / 40)


def recipe_help() -> str:
    return "; ".join(f"{name}: {r.summary}" for name, r in RECIPES.items())
