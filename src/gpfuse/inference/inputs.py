"""The input forms the predictors accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gpfuse.data.images import read_image

__all__ = ["ImageInput", "as_rgb"]

#: a path, a PIL image, or an (H, W, 3) uint8 array
ImageInput = str | Path | Image.Image | np.ndarray


def as_rgb(image: ImageInput, what: str = "image") -> Image.Image:
    """An RGB PIL image of ``image``; a clear error for an array that is not (H, W, 3) uint8."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{what}: an array image must be (H, W, 3) uint8 RGB, got shape {image.shape} {image.dtype}"
            )
        return Image.fromarray(image)
    raise TypeError(f"{what}: expected a path, a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")
