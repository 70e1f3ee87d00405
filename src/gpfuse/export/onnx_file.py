"""A saved run's model as an ONNX file (``torch.onnx.export(..., dynamo=True)``), verified with ONNX Runtime.

The file has named inputs and outputs, a dynamic batch axis, and the preprocessing it expects as metadata
(``metadata_props``: task, model, input size, mean/std, threshold), so a deployment needs nothing but the
file. Verification runs ONNX Runtime and torch on real inputs from the run's data and fails, naming the
largest difference, above a tolerance.

Exported so far (image size fixed at the run's input size, which is how the run preprocesses every image):
2D segmentation (EA-DK: ``image`` -> ``logits``) and re-identification image-only (GPF-Net: ``image`` ->
``embedding``, the raw feature evaluation ranks; L2-normalise it for cosine ranking). GPF-Net with report
tokens, sentiment (GRF, PGF-Net) and 3D segmentation (BiPVL-Seg) are not exported yet.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from gpfuse.inference.inputs import as_rgb
from gpfuse.inference.reid import ReIDPredictor
from gpfuse.inference.saved_run import SavedRun
from gpfuse.inference.segmentation import SegmentationPredictor
from gpfuse.utils.files import atomic_path

__all__ = ["EXPORTABLE_TASKS", "OnnxMismatchError", "export_onnx"]

log = logging.getLogger(__name__)

EXPORTABLE_TASKS = ("segmentation", "retrieval")


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime's outputs differ from torch's by more than the tolerance."""


class _ImageGraph(nn.Module):
    """``image`` (B, 3, H, W), normalised as the metadata says -> the model output field ``field``."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model, self.field = model, field

    def forward(self, image: Tensor) -> Tensor:
        return getattr(self.model({"image": image}), self.field)


@dataclass
class _ImageSpec:
    """What differs between the image tasks: the output, the split-file column of image paths, the transform."""

    output: str
    column: str
    transform: Callable[[Image.Image], Tensor]
    meta: dict[str, str]


def _image_spec(run: SavedRun) -> _ImageSpec:
    if run.config.task == "segmentation":
        seg = SegmentationPredictor(run)
        return _ImageSpec(
            "logits",
            "image",
            lambda im: seg.transform(im, np.zeros((1, 1), bool))[0],
            {
                "input_mean": json.dumps(seg.transform.mean.flatten().tolist()),
                "input_std": json.dumps(seg.transform.std.flatten().tolist()),
                "threshold": str(seg.threshold),
                "outputs": "logits: (B, 1, H, W); probability = sigmoid(logits), mask = probability >= threshold",
            },
        )
    reid = ReIDPredictor(run)
    return _ImageSpec(
        "embedding",
        "path",
        reid.transform,
        {
            "input_mean": json.dumps(reid.transform.mean.flatten().tolist()),
            "input_std": json.dumps(reid.transform.std.flatten().tolist()),
            "metric": reid.metric,
            "outputs": "embedding: (B, D) image-only (no report); rank by the metric, cosine on L2-normalised rows",
        },
    )


def _split_images(run_dir: Path, column: str, limit: int) -> list[Path]:
    """Up to ``limit`` images listed in the run's validation, then test split files, that exist from here."""
    splits = run_dir / "splits"
    found: list[Path] = []
    for split in [*sorted(splits.glob("val*.txt")), *sorted(splits.glob("test*.txt")), *sorted(splits.glob("q*.txt"))]:
        with split.open(newline="", encoding="utf-8") as f:
            found += [Path(r[column]) for r in csv.DictReader(f, delimiter="\t") if Path(r[column]).is_file()]
        if len(found) >= limit:
            break
    return found[:limit]


def _verification_batch(spec: _ImageSpec, run_dir: Path, images: Sequence[str | Path] | None, limit: int) -> Tensor:
    paths = [Path(p) for p in images] if images else _split_images(run_dir, spec.column, limit)
    if not paths:
        raise FileNotFoundError(
            f"{run_dir / 'splits'}: none of the run's validation or test images exists from here (paths are "
            "relative to where it was trained); give real images to verify with (--verify-with)"
        )
    return torch.stack([spec.transform(as_rgb(str(p), str(p))) for p in paths])


def _metadata(run: SavedRun, spec: _ImageSpec, example: Tensor) -> dict[str, str]:
    return {
        "gpfuse_task": run.config.task,
        "gpfuse_model": json.dumps(run.model.gpfuse_config),
        "input_size": json.dumps(list(example.shape[-2:])),
        "input_range": "RGB in [0, 1], then (x - mean) / std",
        **spec.meta,
    }


def _verify(path: Path, graph: nn.Module, example: Tensor, tolerance: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = graph(example).numpy()
    got = session.run(None, {"image": example.numpy()})[0]
    if got.shape != expected.shape:
        raise OnnxMismatchError(f"{path}: ONNX Runtime gives shape {got.shape}, torch {expected.shape}")
    largest = float(np.abs(got - expected).max())
    if not largest <= tolerance:
        where = np.unravel_index(int(np.abs(got - expected).argmax()), got.shape)
        raise OnnxMismatchError(
            f"{path}: ONNX Runtime differs from torch by {largest:.3g} (at {tuple(int(i) for i in where)}) on "
            f"{len(example)} real inputs, above the tolerance {tolerance:g}"
        )
    return largest


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    opset: int = 18,
    verify_with: Sequence[str | Path] | None = None,
    verify_count: int = 4,
    tolerance: float = 1e-4,
) -> Path:
    """Write the run's model as ONNX (default ``RUN_DIR/model.onnx``), verified with ONNX Runtime.

    Args:
        run_dir: a finished run folder (or its ``model/`` folder, with ``verify_with``).
        out: the ONNX file to write (atomically). opset: ONNX opset.
        verify_with: real images to verify on; default: up to ``verify_count`` of the run's validation/test
            images that exist from the current directory.
        tolerance: the largest absolute output difference allowed between ONNX Runtime and torch.

    Raises:
        NotImplementedError: a task kind not exported yet. OnnxMismatchError: the verification failed (the
        file is not left behind).
    """
    run_dir = Path(run_dir)
    run = SavedRun.read(run_dir)
    if run.config.task not in EXPORTABLE_TASKS:
        raise NotImplementedError(
            f"{run_dir}: ONNX export of {run.config.task!r} runs is not implemented yet "
            f"(exportable: {', '.join(EXPORTABLE_TASKS)})"
        )
    out = Path(out) if out is not None else run_dir / "model.onnx"
    spec = _image_spec(run)
    graph = _ImageGraph(run.model, spec.output).eval()
    example = _verification_batch(spec, run_dir, verify_with, verify_count)
    import onnx

    with atomic_path(out) as tmp:
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=[spec.output],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        for key, value in _metadata(run, spec, example).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        largest = _verify(tmp, graph, example, tolerance)
    log.info("%s: verified on %d real inputs, largest difference %.3g", out, len(example), largest)
    return out
