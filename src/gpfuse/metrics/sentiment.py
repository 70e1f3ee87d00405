"""Sentiment regression metrics with MMSA conventions (CMU-MOSI / MOSEI).

Reproduces ``MetricsTop.__eval_mosei_regression`` of MMSA (``MMSA/metricsTop.py``), which MMSA also
uses for MOSI, so numbers are comparable with MMSA-based papers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import f1_score

__all__ = ["mosi_regression_metrics"]


def _as_vector(x: Any, name: str) -> np.ndarray:
    """Flatten a numpy array, torch tensor or sequence to a (N,) float64 array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__} ({err})") from err
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} non-finite values (NaN/inf)")
    return arr


def _weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """sklearn weighted F1; ``zero_division=0`` gives the value of sklearn's default without its warning."""
    return float(f1_score(truth, pred, average="weighted", zero_division=0))


def _multiclass_acc(preds: np.ndarray, labels: np.ndarray, bound: float) -> float:
    """Clip both to [-bound, bound], round half to even (``np.round``, as MMSA) and compare."""
    p = np.round(np.clip(preds, -bound, bound))
    t = np.round(np.clip(labels, -bound, bound))
    return float(np.mean(p == t))


def mosi_regression_metrics(preds: Any, labels: Any) -> dict[str, float]:
    """MMSA's regression metrics for CMU-MOSI / MOSEI.

    Args:
        preds: predicted scores, numpy array or torch tensor of any shape with N values (flattened).
        labels: true scores in [-3, 3], same number of values as ``preds``.

    Returns:
        ``Has0_acc_2`` / ``Has0_F1_score``: binary accuracy / weighted F1 with positive = (x >= 0);
        ``Non0_acc_2`` / ``Non0_F1_score``: the same with samples whose label is 0 dropped and
        positive = (x > 0) (NaN when every label is 0);
        ``Mult_acc_5`` / ``Mult_acc_7``: clip to [-2, 2] / [-3, 3], ``np.round`` (half to even), compare;
        ``MAE``: mean absolute error; ``Corr``: Pearson correlation (NaN when preds or labels are
        constant). Python floats at full precision: MMSA rounds them to 4 decimals for display only.
        Computed in float64 (MMSA's MAE uses the input dtype; the difference is below float32 precision).

    Raises:
        ValueError: empty input, different numbers of values, or NaN/inf values.
    """
    p = _as_vector(preds, "preds")
    t = _as_vector(labels, "labels")
    if p.size != t.size:
        raise ValueError(f"preds has {p.size} values but labels has {t.size}")
    if p.size == 0:
        raise ValueError("preds and labels are empty: metrics need at least one value")

    corr = float("nan") if np.ptp(p) == 0 or np.ptp(t) == 0 else float(np.corrcoef(p, t)[0, 1])

    non0 = t != 0
    if non0.any():
        t2, p2 = t[non0] > 0, p[non0] > 0
        non0_acc, non0_f1 = float(np.mean(t2 == p2)), _weighted_f1(t2, p2)
    else:
        non0_acc = non0_f1 = float("nan")

    has0_t, has0_p = t >= 0, p >= 0
    return {
        "Has0_acc_2": float(np.mean(has0_t == has0_p)),
        "Has0_F1_score": _weighted_f1(has0_t, has0_p),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _multiclass_acc(p, t, 2.0),
        "Mult_acc_7": _multiclass_acc(p, t, 3.0),
        "MAE": float(np.mean(np.abs(p - t))),
        "Corr": corr,
    }
