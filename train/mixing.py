"""Augmentations of the batch on the device, after the DALI pipeline, as torchvision's
reference recipe orders them: random erasing per image (--random_erase: its RandomErasing,
the last of its per-image transforms), then per batch mixup (--mixup) or CutMix (--cutmix),
one of the two, 50/50, when both are on (its RandomChoice). Every draw is made on the
device, from the generator passed in (each rank's own: train.loop seeds it for every
micro-batch), with no host sync. Images are normalised (B, 3, H, W) tensors; the targets of
a mixed batch are class probabilities, (B, classes), rows summing to 1."""

from __future__ import annotations

import math

import torch

ERASE_AREA = (0.02, 0.33)  # torchvision's RandomErasing: the share of the image erased,
ERASE_RATIO = (0.3, 3.3)  # the rectangle's aspect ratio (height / width) range,
ERASE_ATTEMPTS = 10  # and the draws it tries before giving up on an image
GAMMA_CANDIDATES = 16  # Marsaglia-Tsang tries: all rejected has a probability below 1e-20


def gamma(alpha: float, generator: torch.Generator) -> torch.Tensor:
    """One draw of Gamma(alpha, 1), a 0-dim tensor on the generator's device: Marsaglia and
    Tsang's method (2000), its tries drawn at once and the first accepted kept (torch's own
    gamma sampler takes no generator); alpha < 1 draws Gamma(alpha + 1) x U^(1 / alpha)."""
    device = generator.device
    shape = alpha + 1 if alpha < 1 else alpha
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    x = torch.randn(GAMMA_CANDIDATES, device=device, generator=generator)
    u = torch.rand(GAMMA_CANDIDATES, device=device, generator=generator)
    v = (1 + c * x) ** 3
    safe_v = v.clamp(min=1e-30)
    accepted = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * safe_v + d * torch.log(safe_v))
    draw = d * safe_v[accepted.int().argmax()]  # the first accepted try
    if alpha < 1:
        draw = draw * torch.rand((), device=device, generator=generator) ** (1 / alpha)
    return draw


def beta(alpha: float, generator: torch.Generator) -> torch.Tensor:
    """One lambda ~ Beta(alpha, alpha), a 0-dim tensor on the generator's device."""
    a, b = gamma(alpha, generator), gamma(alpha, generator)
    return a / (a + b).clamp(min=1e-30)  # both underflowing to 0 (alpha < 1): lambda 0


def cutmix_box(
    lam: torch.Tensor, height: int, width: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the (H, W) mask of CutMix's box, the lambda it gives: 1 - its area / the image's).
    torchvision's: a centre drawn uniformly over the image, half-sides int(sqrt(1 - lam) / 2
    x side), clipped to the image, so the area pasted can be less than 1 - lam."""
    device = lam.device
    centre_y = torch.randint(height, (), device=device, generator=generator)
    centre_x = torch.randint(width, (), device=device, generator=generator)
    half = 0.5 * torch.sqrt(1.0 - lam)
    half_h, half_w = (half * height).floor().long(), (half * width).floor().long()
    y0, y1 = (centre_y - half_h).clamp(min=0), (centre_y + half_h).clamp(max=height)
    x0, x1 = (centre_x - half_w).clamp(min=0), (centre_x + half_w).clamp(max=width)
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return box, 1.0 - ((y1 - y0) * (x1 - x0)).float() / (height * width)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup: float,
    cutmix: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, their targets): each image mixed with another of the batch (one
    permutation), by mixup (a blend, lambda ~ Beta(mixup)) or CutMix (a box pasted, lambda
    ~ Beta(cutmix) corrected to the box), one of the two per batch when both are on."""
    device = images.device
    perm = torch.randperm(images.shape[0], device=device, generator=generator)
    other = images[perm]
    candidates = []  # (images, lambda) of each method that is on
    if mixup > 0:
        lam = beta(mixup, generator)
        candidates.append((torch.lerp(other, images, lam.to(images.dtype)), lam))
    if cutmix > 0:
        box, lam = cutmix_box(beta(cutmix, generator), *images.shape[2:], generator)
        candidates.append((torch.where(box, other, images), lam))
    mixed, lam = candidates[0]
    if len(candidates) == 2:  # 50/50, drawn on the device: both are computed, one is kept
        use_cutmix = torch.rand((), device=device, generator=generator) < 0.5
        mixed = torch.where(use_cutmix, candidates[1][0], mixed)
        lam = torch.where(use_cutmix, candidates[1][1], lam)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).float()
    return mixed, lam * one_hot + (1.0 - lam) * one_hot[perm]


def random_erase(
    images: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """torchvision's RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0) on each
    image of the batch: with probability p, the first of 10 draws of a rectangle that fits
    is set to 0 (the mean colour, after normalisation); when none fits, nothing is erased."""
    batch, _, height, width = images.shape
    device = images.device
    shape = (batch, ERASE_ATTEMPTS)
    draw = torch.empty(shape, device=device)
    area = height * width * draw.uniform_(*ERASE_AREA, generator=generator)
    log_ratio = torch.empty(shape, device=device).uniform_(
        *map(math.log, ERASE_RATIO), generator=generator
    )
    h = torch.sqrt(area * torch.exp(log_ratio)).round().long()
    w = torch.sqrt(area / torch.exp(log_ratio)).round().long()
    fits = (h < height) & (w < width)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits (0 if none)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    erase = fits.any(1) & (torch.rand(batch, device=device, generator=generator) < probability)
    top = (torch.rand(batch, device=device, generator=generator) * (height - h + 1)).floor().long()
    left = (torch.rand(batch, device=device, generator=generator) * (width - w + 1)).floor().long()
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    inside = (rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
    inside = inside & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None])
    return images.masked_fill((inside & erase[:, None, None])[:, None], 0)
