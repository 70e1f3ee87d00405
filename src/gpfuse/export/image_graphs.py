"""Export specs of the 2D image tasks: EA-DK ``image`` -> ``logits`` and GPF-Net ``image`` -> ``embedding``.

The image size is fixed at the run's input size (the run resizes every image to it); the batch axis is dynamic.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gpfuse.export.graph_spec import BatchGraph, GraphSpec, register_spec
from gpfuse.inference.inputs import as_rgb
from gpfuse.inference.reid import ReIDPredictor
from gpfuse.inference.saved_run import SavedRun
from gpfuse.inference.segmentation import SegmentationPredictor

__all__ = ["reid_spec", "segmentation_spec", "split_files"]


def split_files(run_dir: Path, column: str, limit: int) -> list[Path]:
    """Up to ``limit`` files of column ``column`` listed in the run's validation, test, then query split files,
    that exist from the current directory."""
    splits = run_dir / "splits"
    found: list[Path] = []
    for split in [*sorted(splits.glob("val*.txt")), *sorted(splits.glob("test*.txt")), *sorted(splits.glob("q*.txt"))]:
        with split.open(newline="", encoding="utf-8") as f:
            found += [Path(r[column]) for r in csv.DictReader(f, delimiter="\t") if Path(r[column]).is_file()]
        if len(found) >= limit:
            break
    return found[:limit]


def image_batch(
    transform: Callable[[Image.Image], Tensor], run_dir: Path, column: str, given: Sequence[Path] | None, limit: int
) -> Tensor:
    """(N, 3, H, W): the given images, or up to ``limit`` of the run's own, through the run's transform."""
    paths = list(given) if given else split_files(run_dir, column, limit)
    if not paths:
        raise FileNotFoundError(
            f"{run_dir / 'splits'}: none of the run's validation or test images exists from here (paths are "
            "relative to where it was trained); give real images to verify with (--verify-with)"
        )
    return torch.stack([transform(as_rgb(str(p), str(p))) for p in paths])


def _image_meta(transform: object, example: Tensor) -> dict[str, str]:
    return {
        "input_size": json.dumps(list(example.shape[-2:])),
        "input_range": "RGB in [0, 1], then (x - mean) / std",
        "input_mean": json.dumps(transform.mean.flatten().tolist()),  # type: ignore[attr-defined]
        "input_std": json.dumps(transform.std.flatten().tolist()),  # type: ignore[attr-defined]
    }


@register_spec("segmentation")
def segmentation_spec(run: SavedRun, run_dir: Path, given: Sequence[Path] | None, limit: int) -> GraphSpec:
    """EA-DK: ``image`` (B, 3, H, W) -> ``logits`` (B, 1, H, W)."""
    seg = SegmentationPredictor(run)
    example = image_batch(lambda im: seg.transform(im, np.zeros((1, 1), bool))[0], run_dir, "image", given, limit)
    meta = {
        **_image_meta(seg.transform, example),
        "threshold": str(seg.threshold),
        "outputs": "logits: (B, 1, H, W); probability = sigmoid(logits), mask = probability >= threshold",
    }
    return GraphSpec(BatchGraph(run.model, ["logits"]), {"image": example}, ["logits"], {"image": {0: "batch"}}, meta)


@register_spec("retrieval")
def reid_spec(run: SavedRun, run_dir: Path, given: Sequence[Path] | None, limit: int) -> GraphSpec:
    """GPF-Net image-only: ``image`` (B, 3, H, W) -> ``embedding`` (B, D), the raw feature evaluation ranks."""
    reid = ReIDPredictor(run)
    example = image_batch(reid.transform, run_dir, "path", given, limit)
    meta = {
        **_image_meta(reid.transform, example),
        "metric": reid.metric,
        "outputs": "embedding: (B, D) image-only (no report); rank by the metric, cosine on L2-normalised rows",
    }
    graph = BatchGraph(run.model, ["embedding"])
    return GraphSpec(graph, {"image": example}, ["embedding"], {"image": {0: "batch"}}, meta)
