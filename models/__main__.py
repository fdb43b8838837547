"""python -m models: parameter count, GFLOPs at the chosen resolution and survival probabilities."""

from __future__ import annotations

import argparse
import sys

from models.flops import count_flops, skipped_share, training_flops
from models.resnet import SD_MODES, STAGE_BLOCKS, VARIANTS, build_resnet, survival_probs

# The flags are the trainer's (python -m train), spelt with underscores; hyphens and the
# older names are accepted too. models/ imports nothing of ours, so they are spelt out here.
ALIASES = {
    "--sd-mode": "--sd_mode",
    "--final-survival": "--pL",
    "--final_survival": "--pL",
    "--num-classes": "--num_classes",
    "--image-size": "--image_size",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models",
        description="Describe one ResNet: parameters, FLOPs and each block's survival probability.",
        epilog="Older names still accepted: --sd-mode, --final-survival (--pL), --num-classes, "
        "--image-size.",
    )
    p.add_argument("--depth", type=int, default=50, choices=sorted(STAGE_BLOCKS), help="depth")
    p.add_argument(
        "--variant",
        default="preact",
        choices=VARIANTS,
        help="preact: full pre-activation (default); v1.5: torchvision's post-activation ResNet",
    )
    p.add_argument(
        "--sd", type=int, choices=[0, 1], help="stochastic depth: 1 on, 0 off (default 0)"
    )
    p.add_argument(
        "--sd_mode",
        choices=SD_MODES,
        help="with --sd 1: batch (the paper's: whole blocks skipped per step, the default) or "
        "sample (per-sample drop path)",
    )
    p.add_argument(
        "--pL",
        type=float,
        default=0.5,
        help="survival probability of the last block, in (0, 1] (default 0.5)",
    )
    p.add_argument(
        "--num_classes", type=int, default=1000, help="classifier outputs (default 1000)"
    )
    p.add_argument(
        "--image_size", type=int, default=224, help="input side for the FLOP counts (default 224)"
    )
    p.add_argument(
        "--blurpool",
        action="store_true",
        help="FFCV's BlurPool before the blocks' strided convolutions (as the trainer's flag)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args([spelt(a) for a in argv])
    args.sd_mode = sd_mode_of(p, args)
    return args


def spelt(token: str) -> str:
    """An older or hyphenated flag name as the trainer spells it; other tokens as given."""
    name, sep, value = token.partition("=")
    return ALIASES.get(name, name) + sep + value if token.startswith("--") else token


def sd_mode_of(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The model's mode: off, or --sd 1's --sd_mode. The older --sd-mode batch|sample alone
    still turns it on; --sd 0 with a mode is a contradiction."""
    if args.sd == 0 and args.sd_mode not in (None, "off"):
        p.error(f"--sd 0 turns stochastic depth off: drop --sd_mode {args.sd_mode} or give --sd 1")
    if args.sd == 1 and args.sd_mode == "off":
        p.error("--sd 1 --sd_mode off: the modes of --sd 1 are batch and sample")
    if args.sd == 1:
        return args.sd_mode or "batch"
    return args.sd_mode or "off"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model = build_resnet(
            args.depth,
            variant=args.variant,
            sd_mode=args.sd_mode,
            final_survival=args.pL,
            num_classes=args.num_classes,
            blurpool=args.blurpool,
        )
    except ValueError as e:
        raise SystemExit(f"python -m models: {e}") from None
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, args.image_size)
    probs = model.survival_probs
    blur = ", BlurPool" if args.blurpool else ""
    print(f"ResNet-{args.depth} ({args.variant}{blur}), stochastic depth: {args.sd_mode}")
    print(f"parameters: {params:,}")
    print(
        f"GFLOPs at {args.image_size}x{args.image_size}: {flops / 1e9:.2f} "
        f"({flops / 2e9:.2f} G multiply-adds), counted by torch.utils.flop_counter"
    )
    batch_probs = survival_probs(len(probs), args.pL)
    total, branches = training_flops(
        args.depth, args.variant, args.image_size, args.num_classes, args.blurpool
    )
    share = skipped_share(batch_probs, total, branches)
    print(f"training GFLOPs per image, forward + backward, every block computed: {total / 1e9:.2f}")
    print(
        f"batch-mode stochastic depth at pL {args.pL:g}: per training step "
        f"{sum(batch_probs):.2f} of {len(probs)} residual branches computed "
        f"({sum(batch_probs) / len(probs):.1%}), {share:.1%} of the training FLOPs skipped "
        "(expected)"
    )
    print("  a share of FLOPs, not of time: make bench-train measures the time")
    print("block  stage  survival")
    index = 0
    for stage, blocks in enumerate(STAGE_BLOCKS[args.depth], start=1):
        for _ in range(blocks):
            print(f"{index + 1:5d}  {stage:5d}  {probs[index]:.4f}")
            index += 1


if __name__ == "__main__":
    main()
