"""scikit-learn's handwritten digits as an ImageNet-style folder (make demo writes it).

1,797 real 8x8 scans of handwritten digits (shipped inside scikit-learn), upscaled to 32x32
RGB JPEGs in wnid-like class folders n00000000 ... n00000009: OUT/train/<wnid>/*.JPEG and a
held-out OUT/val/<wnid>/*.JPEG (every fifth image of each class). The demo's data set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
VAL_EVERY = 5  # every fifth image of a class is held out for validation


def write_digits(out: str | Path, quality: int = 95) -> dict[str, int]:
    """Write the folder tree; return the number of images per split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit("the demo's data set ships with scikit-learn: make install") from e
    digits = load_digits()
    out = Path(out)
    seen = {label: 0 for label in range(10)}
    counts = {"train": 0, "val": 0}
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray((pixels * (255 / 16)).astype(np.uint8))  # values 0..16
        image = grey.resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB")
        split = "val" if seen[int(label)] % VAL_EVERY == VAL_EVERY - 1 else "train"
        seen[int(label)] += 1
        folder = out / split / f"n{int(label):08d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"digit_{index:04d}.JPEG", quality=quality)
        counts[split] += 1
    return counts
