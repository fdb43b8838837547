"""Inspect one image: keep its JPEG bytes, re-encode it (repair or downscale), or skip it.

DALI aborts a whole run on one image it cannot decode, so every image is fully decoded
once here with PIL before it goes into a shard.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

# ImageNet holds a few very large images; they are data, not decompression bombs.
Image.MAX_IMAGE_PIXELS = None
DALI_SAFE_MODES = ("RGB", "L")  # JPEG modes DALI decodes to RGB


@dataclass(frozen=True)
class Inspected:
    status: str  # "stored" (bytes unchanged), "repaired", "resized" or "skipped"
    data: bytes  # the JPEG bytes to store; empty when skipped
    reason: str = ""


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def downscaled(image: Image.Image, max_side: int) -> Image.Image:
    """The image with its longer side at max_side, aspect ratio kept."""
    w, h = image.size
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def stable_words(error: Exception) -> str:
    """An error's message without the addresses of Python objects in it ("cannot identify
    image file <_io.BytesIO object at 0x7f...>"), so that the manifest that records it is the
    same in every run."""
    return re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the bytes", str(error))


def inspect_image(data: bytes, *, quality: int = 95, max_side: int | None = None) -> Inspected:
    """Decode once; store the original JPEG when DALI can decode it, else re-encode or skip."""
    if not data:
        return Inspected("skipped", b"", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF and palette warnings are not errors
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # full decode: raises on truncated or corrupt data
                fmt, mode, size = image.format, image.mode, image.size
                needs_repair = fmt != "JPEG" or mode not in DALI_SAFE_MODES
                too_large = max_side is not None and max(size) > max_side
                if not needs_repair and not too_large:
                    return Inspected("stored", data)
                rgb = image.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on bad data
        return Inspected("skipped", b"", f"undecodable: {type(e).__name__}: {stable_words(e)}")
    if too_large:
        rgb = downscaled(rgb, max_side)
    encoded = encode_jpeg(rgb, quality)
    if needs_repair:
        return Inspected("repaired", encoded, f"{fmt} {mode} re-encoded as RGB JPEG")
    return Inspected("resized", encoded, f"longer side {max(size)} > {max_side}")
