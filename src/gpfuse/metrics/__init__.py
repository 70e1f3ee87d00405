"""Evaluation metrics (pure functions; a leaf package that imports nothing else of gpfuse)."""
from __future__ import annotations

from gpfuse.metrics.sentiment import mosi_regression_metrics

__all__ = ["mosi_regression_metrics"]
from gpfuse.metrics.reid import compute_distance_matrix, evaluate_features, evaluate_rank, re_ranking  # noqa: E402
__all__ += ["compute_distance_matrix", "evaluate_features", "evaluate_rank", "re_ranking"]
from gpfuse.metrics.seg2d import PAPER_METRICS, TOOLBOX_METRICS, PolypEvaluator, polyp_scores  # noqa: E402
__all__ += ["PAPER_METRICS", "TOOLBOX_METRICS", "PolypEvaluator", "polyp_scores"]
from gpfuse.metrics.seg3d import EMPTY_RULE, summarise_cases, volume_metrics  # noqa: E402
__all__ += ["EMPTY_RULE", "summarise_cases", "volume_metrics"]
