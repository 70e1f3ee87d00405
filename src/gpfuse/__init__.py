"""gpfuse: gated, progressive multimodal fusion (GPF-Net, GRF, PGF-Net, EA-DK, BiPVL-Seg).

``gpfuse.load(run_or_model_folder)`` gives a trained model with its preprocessing (:mod:`gpfuse.inference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from gpfuse.inference import Engine, Predictor


def load(
    path: str | Path, device: Any = "cpu", engine: Engine = "torch", onnx_file: str | Path | None = None
) -> Predictor:
    """The predictor of a saved run or model folder, its model run by torch or ONNX Runtime (see
    :func:`gpfuse.inference.load`); imported on first use, so that ``import gpfuse`` stays light."""
    from gpfuse.inference import load as load_predictor

    return load_predictor(path, device, engine, onnx_file)
