"""python -m models: parameter count, GFLOPs at the chosen resolution and survival probabilities."""

from __future__ import annotations

import argparse

from models.flops import count_flops, skipped_share, training_flops
from models.resnet import SD_MODES, STAGE_BLOCKS, VARIANTS, build_resnet, survival_probs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m models",
        description="Describe one ResNet: parameters, FLOPs and each block's survival probability.",
    )
    p.add_argument("--depth", type=int, default=50, choices=sorted(STAGE_BLOCKS), help="depth")
    p.add_argument(
        "--variant",
        default="preact",
        choices=VARIANTS,
        help="preact: full pre-activation (default); v1.5: torchvision's post-activation ResNet",
    )
    p.add_argument(
        "--sd-mode",
        default="off",
        choices=SD_MODES,
        help="stochastic depth: off; batch (the paper's: whole blocks skipped per step); "
        "sample (per-sample drop path)",
    )
    p.add_argument(
        "--final-survival",
        type=float,
        default=0.5,
        help="survival probability pL of the last block, in (0, 1] (default 0.5)",
    )
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    p.add_argument(
        "--image-size",
        "--image_size",
        type=int,
        default=224,
        help="input side for the FLOP counts (default 224)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model = build_resnet(
            args.depth,
            variant=args.variant,
            sd_mode=args.sd_mode,
            final_survival=args.final_survival,
            num_classes=args.num_classes,
        )
    except ValueError as e:
        raise SystemExit(f"python -m models: {e}") from None
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, args.image_size)
    probs = model.survival_probs
    print(f"ResNet-{args.depth} ({args.variant}), stochastic depth: {args.sd_mode}")
    print(f"parameters: {params:,}")
    print(
        f"GFLOPs at {args.image_size}x{args.image_size}: {flops / 1e9:.2f} "
        f"({flops / 2e9:.2f} G multiply-adds), counted by torch.utils.flop_counter"
    )
    batch_probs = survival_probs(len(probs), args.final_survival)
    total, branches = training_flops(args.depth, args.variant, args.image_size, args.num_classes)
    share = skipped_share(batch_probs, total, branches)
    print(f"training GFLOPs per image, forward + backward, every block computed: {total / 1e9:.2f}")
    print(
        f"batch-mode stochastic depth at pL {args.final_survival:g}: per training step "
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
