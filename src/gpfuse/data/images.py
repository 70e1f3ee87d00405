"""Reading images: the suffixes gpfuse accepts, ImageNet statistics, and decoding that names the file."""

from __future__ import annotations

import struct
from pathlib import Path

from PIL import Image

from gpfuse.data.decoded_files import DecodedFiles

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "check_image", "read_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


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


def check_image(path: str | Path, known: DecodedFiles | None = None) -> str | None:
    """Why ``path`` cannot be read, or None when it decodes. The pixels are decoded (PIL's ``verify()`` passes a
    truncated JPEG), once: a file in ``known`` that has not changed since is not decoded again, and one that
    decodes is added to it."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    if known is not None and known.contains(path):
        return None
    try:
        with Image.open(path) as img:
            img.load()
    except _DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    if known is not None:
        known.add(path)
    return None
