"""Static int8 of a 2D segmentation run's ONNX file, with an accuracy guard (issue 26).

ONNX Runtime's static quantisation (QDQ): convolution weights int8 per output channel, activations uint8 with
ranges calibrated (MinMax) on real frames of the run's own training split, through the run's preprocessing. Only
convolutions are quantised: they are nearly all of EA-DK's FLOPs (``benchmarks/ea_dk_profile.py``), while the
attention, MLP and per-sample kernel products that decide the mask (under 1% of the FLOPs) stay fp32, and so does
the first convolution, which reads the normalised image.

The guard: the quantised file's masks are compared with the torch model's, at the run's threshold, on up to
``verify_count`` validation/test images of the run; below ``min_agreement`` (Dice between the two sets of
masks, all pixels pooled) the file is refused and not written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpfuse.export.image_graphs import split_files
from gpfuse.inference import SavedRun, SegmentationPredictor
from gpfuse.inference.inputs import as_rgb
from gpfuse.inference.onnx_model import OnnxModel
from gpfuse.utils.environment import cpu_flags
from gpfuse.utils.files import atomic_path

log = logging.getLogger(__name__)

__all__ = ["QuantizationAccuracyError", "QuantizationReport", "quantize_int8"]


class QuantizationAccuracyError(ValueError):
    """The quantised file's masks agree with the torch model's less than the bound asked for."""


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_int8` wrote and how close it stays: ``agreement`` is the Dice between the torch
    model's masks and the int8 file's (all verification pixels pooled), ``largest_difference`` the largest
    probability difference, over ``images`` images."""

    path: Path
    agreement: float
    largest_difference: float
    images: int
    calibration_images: int


def _train_images(run_dir: Path, count: int, seed: int) -> list[Path]:
    path = run_dir / "splits" / "train.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training split listed (a 2D segmentation run folder has it)")
    with path.open(newline="", encoding="utf-8") as f:
        images = [Path(r["image"]) for r in csv.DictReader(f, delimiter="\t") if Path(r["image"]).is_file()]
    if not images:
        raise FileNotFoundError(
            f"{path}: none of the run's training images exists from here (paths are relative to where it was "
            "trained): calibration needs them"
        )
    return random.Random(seed).sample(images, min(count, len(images)))


class _Frames:
    """ONNX Runtime's calibration reader (``get_next``): one preprocessed image at a time."""

    def __init__(self, batch: torch.Tensor) -> None:
        self._frames: Iterator[torch.Tensor] = iter(batch.split(1))

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._frames, None)
        return None if frame is None else {"image": frame.numpy()}


def _first_conv(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    return [next(node.name for node in graph.node if node.op_type == "Conv")]


def _quantize(src: Path, dst: Path, calibration: torch.Tensor) -> None:
    """QDQ static int8 of the convolutions of ``src`` but the first, into ``dst``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    source = src.resolve()  # before the change of directory below
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        with contextlib.chdir(folder):  # shape inference leaves files in the working directory
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dst),
            _Frames(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=_first_conv(prepared),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # without VNNI, u8 x s8 products can saturate: 7-bit weights (ONNX Runtime's advice)
            reduce_range=not (cpu_flags()["avx512_vnni"] or cpu_flags()["avx_vnni"]),
        )


def _agreement(torch_prob: np.ndarray, int8_prob: np.ndarray, threshold: float) -> float:
    a, b = torch_prob >= threshold, int8_prob >= threshold
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def quantize_int8(
    run_dir: str | Path,
    fp32_file: str | Path | None = None,
    out: str | Path | None = None,
    calibration: int = 32,
    verify_with: Sequence[str | Path] | None = None,
    verify_count: int = 16,
    min_agreement: float = 0.98,
    seed: int = 0,
) -> QuantizationReport:
    """Write the static int8 form of the run's ONNX file ``fp32_file`` (default ``RUN_DIR/model.onnx`` of
    ``gpfuse export``) to ``out`` (default ``RUN_DIR/model.int8.onnx``), calibrated on ``calibration`` images of
    the run's training split (seeded), and refuse it (:class:`QuantizationAccuracyError`, nothing written) when its
    masks agree with the torch model's less than ``min_agreement`` on ``verify_with`` (default: up to
    ``verify_count`` of the run's validation/test images)."""
    if not 0 < min_agreement <= 1:
        raise ValueError(f"min_agreement must be in (0, 1], got {min_agreement}")
    if calibration < 1:
        raise ValueError(f"calibration must be >= 1 image, got {calibration}")
    run_dir = Path(run_dir)
    fp32_file = Path(fp32_file) if fp32_file is not None else run_dir / "model.onnx"
    out = Path(out) if out is not None else run_dir / "model.int8.onnx"
    torch_run = SavedRun.read(run_dir)
    if torch_run.config.task != "segmentation":
        raise NotImplementedError(f"{run_dir}: int8 export is for 2D segmentation runs, not {torch_run.config.task!r}")
    SavedRun.read(run_dir, engine="onnxruntime", onnx_file=fp32_file)  # the run's own model, or a clear error
    predictor = SegmentationPredictor(torch_run)
    frames = _train_images(run_dir, calibration, seed)
    calibration_batch = torch.stack([predictor.transform(as_rgb(p), np.zeros((1, 1), bool))[0] for p in frames])
    verify = [Path(p) for p in verify_with] if verify_with else split_files(run_dir, "image", verify_count)
    if not verify:
        raise FileNotFoundError(f"{run_dir / 'splits'}: none of the run's validation or test images exists from here")
    expected = predictor.probabilities([str(p) for p in verify])
    with atomic_path(out) as tmp:
        _quantize(fp32_file, tmp, calibration_batch)
        _copy_metadata(fp32_file, tmp, calibration_batch.shape[0])
        int8 = SegmentationPredictor(SavedRun(torch_run.folder, torch_run.config, torch_run.stats, OnnxModel(tmp)))
        got = int8.probabilities([str(p) for p in verify])
        flat_expected = np.concatenate([p.ravel() for p in expected])
        flat_got = np.concatenate([p.ravel() for p in got])
        agreement = _agreement(flat_expected, flat_got, predictor.threshold)
        largest = float(np.abs(flat_expected - flat_got).max())
        if agreement < min_agreement:
            raise QuantizationAccuracyError(
                f"{out}: the int8 file's masks agree with the torch model's at Dice {agreement:.4f} on {len(verify)} "
                f"images, below the bound {min_agreement} (largest probability difference {largest:.3f}); "
                "not written. Keep the fp32 file, or calibrate on more images (--calibration)"
            )
    log.info("%s: int8 masks agree with torch at Dice %.4f on %d images", out, agreement, len(verify))
    return QuantizationReport(out, agreement, largest, len(verify), int(calibration_batch.shape[0]))


def _copy_metadata(src: Path, dst: Path, calibration: int) -> None:
    """The fp32 file's metadata (task, model, preprocessing) on the quantised file, and how it was quantised."""
    import onnx

    source = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    how = {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8", "quantised": "Conv but the first"}
    for key, value in {**source, "quantization": json.dumps({**how, "calibration_images": calibration})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
