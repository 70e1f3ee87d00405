"""2D segmentation from a saved run: images in any common form -> probability maps and masks at each image's
own size, with the run's resize, normalisation and threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from gpfuse.config import SegDataConfig
from gpfuse.data.seg_transforms import SegTransform
from gpfuse.encoders.image import IMAGE_ENCODERS
from gpfuse.inference.inputs import ImageInput, as_rgb
from gpfuse.inference.saved_run import SavedRun

__all__ = ["SegmentationPredictor", "SegmentationResult", "full_size_probabilities"]


def full_size_probabilities(logits: Tensor, sizes: Sequence[Sequence[int]]) -> list[Tensor]:
    """(B, 1, h, w) logits -> per image (H_i, W_i) probabilities, resized bilinearly to its own size."""
    return [
        torch.sigmoid(F.interpolate(logits[i : i + 1].float(), size=tuple(size), mode="bilinear", align_corners=False))[
            0, 0
        ]
        for i, size in enumerate(sizes)
    ]


@dataclass
class SegmentationResult:
    """probability: (H, W) float32 in [0, 1] at the input's size; mask: (H, W) bool, probability >= threshold."""

    probability: np.ndarray
    mask: np.ndarray


class SegmentationPredictor:
    """A 2D segmentation run's model with its preprocessing (``gpfuse.load`` builds it).

    Example::

        seg = gpfuse.load("runs/ea_dk_kvasir/seed_42")
        result = seg.predict("frame.jpg")            # or a list of paths / PIL images / uint8 arrays
        result.mask.shape == (height, width)
    """

    def __init__(self, run: SavedRun, batch_size: int | None = None) -> None:
        self.run = run
        data = run.config.data_as(SegDataConfig)
        encoder = IMAGE_ENCODERS[run.config.model["encoder"]][0]
        self.transform = SegTransform(data.image_size, mean=encoder.input_mean, std=encoder.input_std)
        self.threshold = run.config.train.threshold
        self.batch_size = batch_size or data.eval_batch_size

    @torch.no_grad()
    def probabilities(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """(H_i, W_i) float32 probability maps, one per image, at each image's own size."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [as_rgb(im, f"image {start + i}") for i, im in enumerate(images[start : start + self.batch_size])]
            x = torch.stack([self.transform(im, np.zeros((1, 1), bool))[0] for im in chunk]).to(self.run.device)
            with self.run.autocast():
                logits = self.run.model({"image": x}).logits.float()
            out += [p.cpu().numpy() for p in full_size_probabilities(logits, [im.size[::-1] for im in chunk])]
        return out

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> SegmentationResult | list[SegmentationResult]:
        """Probability map and mask of one image, or a list of them for a list of images."""
        single = not isinstance(images, (list, tuple))  # any other input is one image
        batch = [cast(ImageInput, images)] if single else list(cast(Sequence[ImageInput], images))
        probs = self.probabilities(batch)
        results = [SegmentationResult(p, p >= self.threshold) for p in probs]
        return results[0] if single else results
