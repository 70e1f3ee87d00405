"""Export specs of the 2D image tasks: EA-DK ``image`` -> ``logits``; GPF-Net ``image`` (+ ``text_ids``, ``text_mask``
when it reads reports; image-only on request) -> ``embedding``.

The image size is fixed at the run's input size (the run resizes every image to it); the batch axis is dynamic.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gpfuse.export.graph_spec import BatchGraph, GraphSpec, register_spec
from gpfuse.inference.inputs import as_rgb
from gpfuse.inference.reid import ReIDPredictor
from gpfuse.inference.saved_run import SavedRun
from gpfuse.inference.segmentation import SegmentationPredictor

if TYPE_CHECKING:
    from gpfuse.config import ReIDDataConfig

__all__ = ["reid_image_spec", "reid_spec", "segmentation_spec", "split_files", "split_reports"]


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


def _reid_meta(reid: ReIDPredictor, example: Tensor, outputs: str) -> dict[str, str]:
    return {**_image_meta(reid.transform, example), "metric": reid.metric, "outputs": outputs}


def split_reports(run: SavedRun, run_dir: Path, images: Sequence[Path]) -> list[str]:
    """The report of each Colo-Pair frame ``<root>/resized_frame/<video>/<view>/<frame>``: its video's patient's
    ``Eng_text`` in the run's report table ("" for a patient kept without one, ``missing_report: empty``)."""
    from gpfuse.data.colo_pair import load_colo_pair

    d = cast("ReIDDataConfig", run.config.data)
    if d.source != "colo_pair":
        raise ValueError(
            f"{run_dir}: the model reads reports but its {d.source} data has none to verify the text inputs "
            "with; export the image-only graph (--image-only)"
        )
    _, reports = load_colo_pair(
        d.root, d.fold, d.num_folds, val_videos=d.val_ids, report_table=d.report_table, missing_report=d.missing_report
    )
    unknown = [str(p) for p in images if p.parent.parent.name not in reports]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not frames of the run's Colo-Pair videos ({d.root}/resized_frame/<video>/<view>/), "
            "so their reports are unknown"
        )
    return [reports[p.parent.parent.name] for p in images]


@register_spec("retrieval")
def reid_spec(run: SavedRun, run_dir: Path, given: Sequence[Path] | None, limit: int) -> GraphSpec:
    """GPF-Net: ``image`` (B, 3, H, W), and with a text encoder ``text_ids`` and ``text_mask`` (B, L) -> ``embedding``
    (B, D), the raw feature evaluation ranks. Verified on real frames with their real reports."""
    reid = ReIDPredictor(run)
    if reid.text_model is None:
        return reid_image_spec(run, run_dir, given, limit)
    paths = list(given) if given else split_files(run_dir, "path", limit)
    example = image_batch(reid.transform, run_dir, "path", paths, limit)
    tokens = reid._report_tokens(split_reports(run, run_dir, paths), len(paths))
    meta = _reid_meta(
        reid,
        example,
        "embedding: (B, D) image fused with its report; rank by the metric, cosine on L2-normalised rows",
    )
    meta |= {
        "text_model": str(reid.text_model),
        "max_text_len": str(reid.max_text_len),
        "text_inputs": (
            "text_ids: (B, max_text_len) int64 ids of text_model's tokenizer, padded to max_text_len with its pad "
            "id; text_mask: (B, max_text_len) bool attention mask, all False for an image without a report"
        ),
    }
    inputs = {"image": example, **tokens}
    graph = BatchGraph(run.model, ["embedding"])
    return GraphSpec(graph, inputs, ["embedding"], {k: {0: "batch"} for k in inputs}, meta)


@register_spec("retrieval", image_only=True)
def reid_image_spec(run: SavedRun, run_dir: Path, given: Sequence[Path] | None, limit: int) -> GraphSpec:
    """GPF-Net image-only: ``image`` (B, 3, H, W) -> ``embedding`` (B, D), what the model gives an image without
    a report (the text encoder is not in the graph)."""
    reid = ReIDPredictor(run)
    example = image_batch(reid.transform, run_dir, "path", given, limit)
    meta = _reid_meta(
        reid, example, "embedding: (B, D) image-only (no report); rank by the metric, cosine on L2-normalised rows"
    )
    graph = BatchGraph(run.model, ["embedding"])
    return GraphSpec(graph, {"image": example}, ["embedding"], {"image": {0: "batch"}}, meta)
