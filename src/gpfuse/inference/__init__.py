"""Predicting with a saved run from Python: ``gpfuse.load(path)`` returns the predictor of the run's task kind,
with the run's own preprocessing, its model in eval mode on ``device``. The CLI's ``gpfuse predict`` runs
through the same predictors.

====================  ====================================================================================
task kind             predictor
====================  ====================================================================================
segmentation (2D)     :class:`SegmentationPredictor` ``.predict(images)`` -> probability maps and masks
retrieval (ReID)      :class:`ReIDPredictor` ``.embed(images, reports)``, ``.rank(query, gallery, top_k)``
regression            :class:`SentimentPredictor` ``.predict(texts, audio=None, vision=None)`` -> scores
segmentation3d        :class:`VolumePredictor` ``.predict(path_or_array, spacing=None)`` -> label volume
====================  ====================================================================================
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpfuse.inference.onnx_model import GraphInputsOnly, OnnxModel
from gpfuse.inference.reid import ReIDPredictor
from gpfuse.inference.saved_run import Engine, SavedRun
from gpfuse.inference.segmentation import SegmentationPredictor, SegmentationResult
from gpfuse.inference.sentiment import SentimentPredictor
from gpfuse.inference.volumes import VolumePredictor

__all__ = [
    "Engine",
    "GraphInputsOnly",
    "OnnxModel",
    "Predictor",
    "ReIDPredictor",
    "SavedRun",
    "SegmentationPredictor",
    "SegmentationResult",
    "SentimentPredictor",
    "VolumePredictor",
    "load",
]

Predictor = SegmentationPredictor | ReIDPredictor | SentimentPredictor | VolumePredictor

_PREDICTORS = {
    "segmentation": SegmentationPredictor,
    "retrieval": ReIDPredictor,
    "regression": SentimentPredictor,
    "segmentation3d": VolumePredictor,
}


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    engine: Engine = "torch",
    onnx_file: str | Path | None = None,
) -> Predictor:
    """The predictor of the run (or saved model folder) at ``path``, on ``device``; with
    ``engine="onnxruntime"`` its model is the run's ONNX file (``onnx_file``, default ``path/model.onnx`` of
    ``gpfuse export``) run by ONNX Runtime on the CPU, behind the same predictor.

    >>> import gpfuse
    >>> seg = gpfuse.load("runs/ea_dk_kvasir/seed_42")          # doctest: +SKIP
    >>> seg.predict("frame.jpg").mask.shape                      # doctest: +SKIP
    (576, 720)
    >>> seg = gpfuse.load("runs/ea_dk_kvasir/seed_42", engine="onnxruntime")   # doctest: +SKIP
    """
    run = SavedRun.read(path, device, engine, onnx_file)
    return _PREDICTORS[run.config.task](run)
