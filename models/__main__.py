"""python -m models: parameter count, GFLOPs at the chosen resolution and survival
probabilities of the network the trainer builds with the same flags."""

from __future__ import annotations

import argparse

from models.flags import MODEL_FLAGS, NUM_CLASSES, FlagParser
from models.flops import count_flops, skipped_share, training_flops
from models.resnet import STAGE_BLOCKS, build_resnet, survival_probs

# --final_survival was this command's name for --pL.
ALIASES = {"--final_survival": "--pL"}


def build_parser() -> FlagParser:
    p = FlagParser(
        prog="python -m models",
        description="Describe one ResNet as the trainer builds it with the same flags: "
        "parameters, FLOPs and each block's survival probability.",
        aliases=ALIASES,
    )
    p.add(*MODEL_FLAGS, NUM_CLASSES)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.sd and {"sd_mode", "pL"} & p.given:
        p.error(f"--{min({'sd_mode', 'pL'} & p.given)} is for stochastic depth: add --sd 1")
    args.sd_mode = args.sd_mode if args.sd else "off"
    return args


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
