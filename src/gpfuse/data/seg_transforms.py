"""Joint image/mask transforms for 2D segmentation: resize, then (training) flips, a random rotation and
scale, and colour jitter (the EA-DK / PraNet augmentations), then normalisation.

Written with torch only: torchvision is not installable here, and MONAI's ``RandAffined`` keeps a numpy
``RandomState`` of its own per transform, which DataLoader workers would copy and repeat. Random draws come
from a given ``torch.Generator`` or torch's global RNG, which Lightning seeds per process and worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from gpfuse.data.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SegTransform"]


class SegTransform:
    """``(PIL image, (H, W) bool mask) -> ((3, S, S) normalised float, (1, S, S) float {0, 1})``.

    Train mode, in order: horizontal and vertical flips (each ``flip_p``); rotation by U(-rotate, rotate)
    degrees and scaling by U(scale) about the centre (zero padding; bilinear for the image, nearest for the
    mask); brightness, contrast and saturation factors each U(1 - jitter, 1 + jitter).

    Args:
        size: output side S (352 in EA-DK and PraNet), or (H, W).
        mean, std: normalisation on [0, 1] pixels (the encoder's own).
    """

    def __init__(
        self,
        size: int | Sequence[int] = 352,
        train: bool = False,
        flip_p: float = 0.5,
        rotate: float = 15.0,
        scale: tuple[float, float] = (0.75, 1.25),
        jitter: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
        if not 0 <= flip_p <= 1 or rotate < 0 or not 0 < scale[0] <= scale[1] or not 0 <= jitter < 1:
            raise ValueError(
                f"need 0 <= flip_p <= 1, rotate >= 0, 0 < scale[0] <= scale[1], 0 <= jitter < 1; got "
                f"flip_p={flip_p}, rotate={rotate}, scale={scale}, jitter={jitter}"
            )
        self.train, self.flip_p, self.rotate, self.scale, self.jitter = train, flip_p, rotate, tuple(scale), jitter
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def _geometry(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._uniform(0, 1) < self.flip_p:
            x, y = x.flip(-1), y.flip(-1)
        if self._uniform(0, 1) < self.flip_p:
            x, y = x.flip(-2), y.flip(-2)
        angle, s = math.radians(self._uniform(-self.rotate, self.rotate)), self._uniform(*self.scale)
        if angle == 0 and s == 1:
            return x, y
        # affine_grid maps output to input coordinates: the inverse of "rotate by angle, scale by s"
        c, n = math.cos(angle) / s, math.sin(angle) / s
        theta = torch.tensor([[c, n, 0.0], [-n, c, 0.0]]).unsqueeze(0)
        grid = F.affine_grid(theta, [1, 1, *x.shape[-2:]], align_corners=False)
        x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        y = F.grid_sample(y[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        return x, y

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        j = self.jitter
        x = x * self._uniform(1 - j, 1 + j)
        mean = x.mean()
        x = (x - mean) * self._uniform(1 - j, 1 + j) + mean
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
        return ((x - gray) * self._uniform(1 - j, 1 + j) + gray).clamp(0, 1)

    def __call__(self, image: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.size
        image = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        y = torch.from_numpy(np.asarray(mask_img) > 127).float().unsqueeze(0)
        if self.train:
            x, y = self._geometry(x, y)
            x = self._colour(x)
        return (x - self.mean) / self.std, y
