"""Bottleneck ResNet-50/101/152 with stochastic depth (Huang et al. 2016).

Two variants share one network skeleton and one stochastic-depth mechanism:

- ``preact`` (default): full pre-activation bottleneck, BN-ReLU before every conv (He et al.,
  "Identity Mappings in Deep Residual Networks"); a projection shortcut, where the shape
  changes, is taken from the normalized input; one BN-ReLU after the last stage.
- ``v1.5``: the post-activation network torchvision ships (stride on the 3x3 conv), with
  exactly torchvision's parameter names and shapes, so state_dicts move both ways.

Either may blur before its strided convolutions (``blurpool``, FFCV's BlurPool): the same
parameters and state_dict keys, another function (a BlurPool v1.5 is not torchvision's
ResNet any more, though torchvision's weights load into it).

Stochastic depth acts on the residual branch only, before the add (as timm does):

- ``batch`` (the paper's method): one Bernoulli draw per block per training step for the
  whole mini-batch. A dropped block's branch is not run at all, forward or backward, which
  is where the paper's training-time saving comes from. The draws come from a
  ``random.Random`` owned by the model, seeded identically on every DDP rank, so every rank
  skips the same blocks; its state travels with checkpoints (``sd_rng_state``).
- ``sample``: drop path per sample (timm's ``drop_path``): every branch is computed and
  masked, so there is no saving, only a different regularizer.

In batch mode a dropped block costs nothing: an identity block returns its input as it is
(no operation, forward or backward, and its BN statistics stay as they were), and a block with
a projection shortcut computes that shortcut alone. A kept branch is scaled by 1/p_l in
training, so the eval-mode network is the plain ResNet; the scale is folded into bn3's affine
weight and bias (two vectors of C numbers) rather than applied to the (B, C, H, W) branch,
so it costs no pass over the activations, forward or backward.
The paper instead trains the branch f' unscaled, x + b * f'(x) with b ~ Bernoulli(p_l), and
multiplies it by p_l at test time, x + p_l * f'(x). We train x + b * f(x) / p_l and test
x + f(x). With f = p_l * f' the two training networks are the same function, and so are the
two test networks: both evaluate at test time the expectation over b of the training network.
Ours needs no change to the network at test time (``tests/test_models.py`` checks the
expectation at the block level).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
VARIANTS = ("preact", "v1.5")
INITS = ("default", "mlperf")  # how the weights start: ResNet.init_weights
SD_MODES = ("off", "batch", "sample")
EXPANSION = 4  # bottleneck output channels = 4 x its width
STAGE_WIDTHS = (64, 128, 256, 512)


def survival_probs(num_blocks: int, final_survival: float) -> list[float]:
    """Linear decay rule: block l of L (l = 1..L) survives with 1 - (l / L) * (1 - pL)."""
    check_final_survival(final_survival)
    return [1.0 - (l / num_blocks) * (1.0 - final_survival) for l in range(1, num_blocks + 1)]


def check_final_survival(final_survival: float) -> None:
    if isinstance(final_survival, bool) or not isinstance(final_survival, (int, float)):
        raise ValueError(f"final_survival (pL) must be a number in (0, 1], got {final_survival!r}")
    if not 0.0 < final_survival <= 1.0:
        raise ValueError(
            f"final_survival (pL) must be in (0, 1], got {final_survival}: "
            "it is the survival probability of the last block (the paper uses 0.5)"
        )


def batch_norm_scaled(bn: nn.BatchNorm2d, x: Tensor, scale: float) -> Tensor:
    """bn(x) * scale, with the scale folded into BN's affine weight and bias: a multiply of
    two C-vectors instead of a pass over the (B, C, H, W) output, forward and backward. The
    running statistics are those of x, as in bn(x)."""
    if scale == 1.0:
        return bn(x)
    if bn.training:  # what nn.BatchNorm2d.forward does with momentum set and stats tracked
        bn.num_batches_tracked.add_(1)
    return F.batch_norm(
        x,
        bn.running_mean,
        bn.running_var,
        bn.weight * scale,
        bn.bias * scale,
        bn.training,
        bn.momentum,
        bn.eps,
    )


def drop_path(x: Tensor, keep_prob: float, training: bool) -> Tensor:
    """Per-sample drop path: zero whole samples of a residual branch, scale the rest by 1/p."""
    if not training or keep_prob >= 1.0:
        return x
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # (B, 1, 1, 1)
    return x * mask.div_(keep_prob)


BLUR_MIN_CHANNELS = 16  # FFCV blurs before strided convolutions with this many inputs or more


class BlurConv2d(nn.Conv2d):
    """A strided convolution after FFCV's BlurPool: its input low-pass filtered first by a
    fixed 3x3 binomial filter, [1, 2, 1] x [1, 2, 1] / 16, depthwise, stride 1, zero padding
    1 (FFCV's BlurPoolConv2d), so that the stride subsamples a smoothed signal. The filter is
    a non-persistent buffer: the state_dict is the plain convolution's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        row = torch.tensor([1.0, 2.0, 1.0])
        blur = (torch.outer(row, row) / 16).expand(self.in_channels, 1, 3, 3).clone()
        self.register_buffer("blur", blur, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        blurred = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=self.in_channels)
        return super().forward(blurred)


def conv2d(
    in_channels: int, out_channels: int, kernel: int, *, stride: int = 1, padding: int = 0,
    blurpool: bool = False,
) -> nn.Conv2d:  # fmt: skip
    """A bias-free convolution; with `blurpool`, a BlurConv2d where FFCV puts one: strided,
    with BLUR_MIN_CHANNELS inputs or more."""
    blurred = blurpool and stride > 1 and in_channels >= BLUR_MIN_CHANNELS
    kind = BlurConv2d if blurred else nn.Conv2d
    return kind(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)


class Bottleneck(nn.Module):
    """One bottleneck block in either variant, with stochastic depth on its residual branch.

    ``keep`` is the batch-mode decision for the current step, set by ``ResNet.forward`` before
    the blocks run (not drawn here, so that recomputation under activation checkpointing sees
    the same decision as the first pass).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        *,
        preact: bool,
        survival_prob: float,
        sd_mode: str,
        blurpool: bool = False,
    ) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.preact = preact
        self.survival_prob = survival_prob
        self.sd_mode = sd_mode
        self.keep = True
        # Parameter names follow torchvision (conv1/bn1, conv2/bn2, conv3/bn3, downsample).
        bn_in = in_channels if preact else width
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(bn_in)
        self.conv2 = conv2d(width, width, 3, stride=stride, padding=1, blurpool=blurpool)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width if preact else out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            projection = conv2d(in_channels, out_channels, 1, stride=stride, blurpool=blurpool)
            # Pre-activation projects the already normalized input, so it needs no BN of its own.
            self.downsample = (
                nn.Sequential(projection)
                if preact
                else nn.Sequential(projection, nn.BatchNorm2d(out_channels))
            )

    def _branch_preact(self, pre: Tensor, scale: float = 1.0) -> Tensor:
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        # relu and the bias-free conv3 commute with a positive scale: scaling bn3 scales the branch
        return self.conv3(self.relu(batch_norm_scaled(self.bn3, out, scale)))

    def _branch_post(self, x: Tensor, scale: float = 1.0) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return batch_norm_scaled(self.bn3, self.conv3(out), scale)

    def _dropped(self, x: Tensor) -> Tensor:
        """The block in a batch-mode step that drops it: its shortcut alone."""
        if self.downsample is None:
            # The identity, as it is: a pre-activation block adds nothing to x, and a
            # post-activation block's input is a ReLU output, so relu(x) is x.
            return x
        if self.preact:  # the projection reads the normalized input: bn1 runs for it
            return self.downsample(F.relu(self.bn1(x)))
        return self.relu(self.downsample(x))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, 4 * width, H/s, W/s)
        batch_mode = self.training and self.sd_mode == "batch"
        if batch_mode and not self.keep:
            return self._dropped(x)
        scale = 1.0 / self.survival_prob if batch_mode else 1.0  # kept: E[branch] unchanged
        if self.preact:
            # relu(bn1(x)) is not in-place: x itself is the identity shortcut.
            pre = F.relu(self.bn1(x))
            shortcut = x if self.downsample is None else self.downsample(pre)
            return shortcut + self._sample_drop(self._branch_preact(pre, scale))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(shortcut + self._sample_drop(self._branch_post(x, scale)))

    def _sample_drop(self, branch: Tensor) -> Tensor:
        """Sample mode: drop path on the branch (masked and scaled per sample)."""
        if self.training and self.sd_mode == "sample":
            return drop_path(branch, self.survival_prob, training=True)
        return branch

    def zero_init_residual(self) -> None:
        """Start the block as its shortcut alone (Goyal et al. 2017)."""
        if self.preact:
            nn.init.zeros_(self.conv3.weight)  # no BN follows conv3 in a pre-activation block
        else:
            nn.init.zeros_(self.bn3.weight)  # torchvision's choice


class ResNet(nn.Module):
    """Stem, four stages of bottleneck blocks, global average pool, linear classifier."""

    def __init__(
        self,
        stage_blocks: Sequence[int],
        *,
        variant: str = "preact",
        sd_mode: str = "off",
        final_survival: float = 0.5,
        num_classes: int = 1000,
        zero_init_residual: bool = True,
        sd_seed: int = 0,
        blurpool: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if sd_mode not in SD_MODES:
            raise ValueError(f"sd_mode must be one of {SD_MODES}, got {sd_mode!r}")
        check_final_survival(final_survival)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        preact = variant == "preact"
        num_blocks = sum(stage_blocks)
        probs = survival_probs(num_blocks, final_survival) if sd_mode != "off" else None
        self.variant = variant
        self.sd_mode = sd_mode
        self.final_survival = final_survival
        self.blurpool = blurpool
        self.survival_probs: list[float] = probs or [1.0] * num_blocks
        # The batch-mode draws: one per block per training step, identical on every rank.
        self.sd_rng = random.Random(sd_seed)
        # Recompute each block's activations in backward instead of keeping them (memory).
        self.checkpoint_activations = False

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels, index = 64, 0
        for stage, (blocks, width) in enumerate(zip(stage_blocks, STAGE_WIDTHS, strict=True)):
            layer = []
            for i in range(blocks):
                stride = 2 if (i == 0 and stage > 0) else 1
                layer.append(
                    Bottleneck(
                        in_channels,
                        width,
                        stride,
                        preact=preact,
                        survival_prob=self.survival_probs[index],
                        sd_mode=sd_mode,
                        blurpool=blurpool,
                    )
                )
                in_channels, index = width * EXPANSION, index + 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
        # Pre-activation blocks end on a conv: normalize once more before pooling.
        self.final_bn = nn.BatchNorm2d(in_channels) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

        self.init_weights(init, zero_init_residual)

    def init_weights(self, init: str, zero_init_residual: bool) -> None:
        """default: He normal (fan_out, torchvision's), BN weight 1 and bias 0, and with
        zero_init_residual each block's branch starting at 0 (Goyal et al.), the classifier
        as nn.Linear leaves it; mlperf: NVIDIA's MLPerf ResNet-50 (MLPerfInit of its MXNet
        code): He normal on fan_in, every BN weight 1 (no block at 0), the classifier's
        weight N(0, 0.01) and bias 0."""
        fan = "fan_in" if init == "mlperf" else "fan_out"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=fan, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if init == "mlperf":
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)
        elif zero_init_residual:
            for block in self.blocks():
                block.zero_init_residual()

    def blocks(self) -> list[Bottleneck]:
        """The residual blocks in forward order."""
        return [m for m in self.modules() if isinstance(m, Bottleneck)]

    def draw_sd_decisions(self) -> list[bool]:
        """Draw this step's batch-mode decisions (one Bernoulli(p_l) per block) and set them."""
        blocks = self.blocks()
        keeps = [self.sd_rng.random() < b.survival_prob for b in blocks]
        for block, keep in zip(blocks, keeps, strict=True):
            block.keep = keep
        return keeps

    def sd_rng_state(self) -> tuple:
        return self.sd_rng.getstate()

    def set_sd_rng_state(self, state: tuple) -> None:
        self.sd_rng.setstate(state)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, num_classes)
        if self.training and self.sd_mode == "batch":
            self.draw_sd_decisions()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            for block in self.blocks():  # the batch-mode decisions are already drawn
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, H/32, W/32)
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        x = torch.flatten(self.avgpool(x), 1)  # (B, 2048)
        return self.fc(x)


def build_resnet(
    depth: int,
    *,
    variant: str = "preact",
    sd_mode: str = "off",
    final_survival: float = 0.5,
    num_classes: int = 1000,
    zero_init_residual: bool = True,
    sd_seed: int = 0,
    blurpool: bool = False,
    init: str = "default",
) -> ResNet:
    """ResNet-50/101/152. ``sd_seed`` seeds the batch-mode draws: give every rank the same.
    ``blurpool``: FFCV's BlurPool before the strided convolutions of the blocks (the 3x3 conv2
    of each stage's first block and its projection shortcut, in both variants; the stem's
    conv has 3 inputs and keeps its stride, as in FFCV)."""
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {depth!r}")
    return ResNet(
        STAGE_BLOCKS[depth],
        variant=variant,
        sd_mode=sd_mode,
        final_survival=final_survival,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
        sd_seed=sd_seed,
        blurpool=blurpool,
        init=init,
    )


def resnet50(**kwargs) -> ResNet:
    return build_resnet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    return build_resnet(101, **kwargs)


def resnet152(**kwargs) -> ResNet:
    return build_resnet(152, **kwargs)
