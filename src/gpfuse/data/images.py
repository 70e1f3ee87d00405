"""Reading images: the suffixes gpfuse accepts, ImageNet statistics, and decoding that names the file."""
from __future__ import annotations

import struct
from pathlib import Path

from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "read_image", "check_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                  Image.DecompressionBombError)


def read_image(path: str | Path) -> Image.Image:
    """Read ``path`` as an RGB PIL image; FileNotFoundError when absent, ValueError naming the file when
    it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except _DECODE_ERRORS as err:
        raise ValueError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def check_image(path: str | Path, full_decode: bool = False) -> str | None:
    """Why ``path`` cannot be read, or None when it looks fine. ``full_decode=False`` only opens the file
    and runs PIL's ``verify()`` (fast; a truncated JPEG may pass and fail later in :func:`read_image`)."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as img:
            if full_decode:
                img.convert("RGB")
            else:
                img.verify()
    except _DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None
