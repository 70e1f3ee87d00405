"""Evaluation metrics (pure functions; a leaf package that imports nothing else of gpfuse)."""

from __future__ import annotations

from gpfuse.metrics.re_ranking import re_ranking
from gpfuse.metrics.reid import compute_distance_matrix, evaluate_features, evaluate_rank
from gpfuse.metrics.seg2d import PAPER_METRICS, TOOLBOX_METRICS, PolypEvaluator, polyp_scores
from gpfuse.metrics.seg3d import EMPTY_RULE, summarise_cases, volume_metrics
from gpfuse.metrics.sentiment import mosi_regression_metrics

__all__ = [
    "EMPTY_RULE",
    "PAPER_METRICS",
    "TOOLBOX_METRICS",
    "PolypEvaluator",
    "compute_distance_matrix",
    "evaluate_features",
    "evaluate_rank",
    "mosi_regression_metrics",
    "polyp_scores",
    "re_ranking",
    "summarise_cases",
    "volume_metrics",
]
