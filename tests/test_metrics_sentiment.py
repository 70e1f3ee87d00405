"""MMSA sentiment metrics: hand-computed values, an independent sklearn/scipy reimplementation, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score

from gpfuse.metrics import mosi_regression_metrics

KEYS = {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}

# Two zero labels, x.5 values (banker's rounding), labels outside [-3, 3], a zero pred on a nonzero label.
LABELS = [-3.2, -2.5, -1.5, -0.4, 0.0, 0.0, 0.5, 1.5, 2.5, 3.6]
PREDS = [-2.2, -2.4, 0.1, 0.3, -0.2, 0.0, 0.0, 2.5, 1.4, 2.9]


def _reference(preds, labels) -> dict[str, float]:
    """Independent MMSA metrics: sklearn accuracy/F1, scipy Pearson, per-element Python rounding."""
    p, t = np.asarray(preds, float).ravel(), np.asarray(labels, float).ravel()

    def mult(bound):  # Python's round() is also round-half-to-even
        clip = lambda v: min(max(v, -bound), bound)  # noqa: E731
        return accuracy_score([round(clip(v)) for v in t], [round(clip(v)) for v in p])

    nz = t != 0
    return {
        "Has0_acc_2": accuracy_score(p >= 0, t >= 0),
        "Has0_F1_score": f1_score(t >= 0, p >= 0, average="weighted"),
        "Non0_acc_2": accuracy_score(p[nz] > 0, t[nz] > 0),
        "Non0_F1_score": f1_score(t[nz] > 0, p[nz] > 0, average="weighted"),
        "Mult_acc_5": mult(2),
        "Mult_acc_7": mult(3),
        "MAE": float(np.mean([abs(a - b) for a, b in zip(p, t)])),
        "Corr": pearsonr(p, t)[0],
    }


def test_hand_computed_values():
    m = mosi_regression_metrics(np.array(PREDS), np.array(LABELS))
    assert set(m) == KEYS and all(type(v) is float for v in m.values())
    # Acc-7: labels clipped [-3,-2.5,-1.5,-0.4,0,0,0.5,1.5,2.5,3] -> round [-3,-2,-2,0,0,0,0,2,2,3]
    #        preds (all inside)                                -> round [-2,-2,0,0,0,0,0,2,1,3]
    #        equal at i=1,3,4,5,6,7,9 -> 7/10 (half-away-from-zero rounding would give 4/10)
    assert m["Mult_acc_7"] == pytest.approx(7 / 10)
    # Acc-5: labels clipped [-2,-2,-1.5,-0.4,0,0,0.5,1.5,2,2] -> round [-2,-2,-2,0,0,0,0,2,2,2]
    #        preds clipped [-2,-2,0.1,0.3,-0.2,0,0,2,1.4,2]   -> round [-2,-2,0,0,0,0,0,2,1,2]
    #        differ at i=2,8 -> 8/10
    assert m["Mult_acc_5"] == pytest.approx(8 / 10)
    # Has0: truth (l>=0) FFFFTTTTTT, pred (p>=0) FFTTFTTTTT: differ at i=2,3,4 -> 7/10
    assert m["Has0_acc_2"] == pytest.approx(7 / 10)
    # F1(T): TP=5 FP=2 FN=1 -> 10/13, support 6; F1(F): TP=2 FP=1 FN=2 -> 4/7, support 4
    assert m["Has0_F1_score"] == pytest.approx((6 * 10 / 13 + 4 * 4 / 7) / 10)
    # Non0: drop i=4,5. truth (l>0) FFFFTTTT, pred (p>0) FFTTFTTT (p=0.0 at i=6 is negative): 5/8
    assert m["Non0_acc_2"] == pytest.approx(5 / 8)
    # F1(T): TP=3 FP=2 FN=1 -> 6/9, support 4; F1(F): TP=2 FP=1 FN=2 -> 4/7, support 4
    assert m["Non0_F1_score"] == pytest.approx((4 * 6 / 9 + 4 * 4 / 7) / 8)
    # |p-l| = 1.0 .1 1.6 .7 .2 0 .5 1.0 1.1 .7 -> 6.9 / 10 (labels are not clipped for MAE)
    assert m["MAE"] == pytest.approx(0.69)
    # sum p = 2.4, sum l = 0.5, sum pl = 30.46, sum p^2 = 27.36, sum l^2 = 40.61, n = 10
    # r = (30.46 - 10*.24*.05) / sqrt((27.36 - 10*.24^2) * (40.61 - 10*.05^2))
    assert m["Corr"] == pytest.approx(30.34 / math.sqrt(26.784 * 40.585))


def test_matches_independent_reimplementation():
    rng = np.random.default_rng(0)
    labels = np.round(rng.uniform(-3.5, 3.5, 300) * 2) / 2  # many exact zeros and x.5 values
    preds = np.concatenate([np.round(rng.normal(0, 1.8, 150) * 2) / 2, rng.normal(0, 1.8, 150)])
    for p, t in [(PREDS, LABELS), (preds, labels)]:
        got, want = mosi_regression_metrics(np.asarray(p), np.asarray(t)), _reference(p, t)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_torch_tensors_of_any_shape_are_flattened():
    want = mosi_regression_metrics(np.array(PREDS), np.array(LABELS))
    preds, labels = torch.tensor(PREDS).view(10, 1), torch.tensor(LABELS, dtype=torch.float64).view(2, 5)
    got = mosi_regression_metrics(preds, labels)
    assert got == pytest.approx(want, rel=1e-6)  # float32 tensor: inputs differ from float64 by ~1e-8


def test_constant_preds_give_nan_corr_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mosi_regression_metrics(np.full(len(LABELS), 0.7), np.array(LABELS))
    assert math.isnan(m["Corr"])
    assert m["MAE"] == pytest.approx(np.mean(np.abs(0.7 - np.array(LABELS))))


def test_all_zero_labels_give_nan_non0():
    m = mosi_regression_metrics(np.array([0.5, -1.0, 0.0]), np.zeros(3))
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)  # truth all >= 0; -1.0 is wrong


@pytest.mark.parametrize(
    ("preds", "labels", "match"),
    [
        (np.zeros(3), np.zeros(4), "preds has 3 values but labels has 4"),
        (np.zeros(0), np.zeros(0), "empty"),
        (np.array([0.0, np.nan]), np.zeros(2), "preds contains 1 non-finite"),
        (np.zeros(2), np.array([np.inf, -np.inf]), "labels contains 2 non-finite"),
        (np.array(["a", "b"]), np.zeros(2), "preds must be numeric"),
    ],
)
def test_errors(preds, labels, match):
    with pytest.raises(ValueError, match=match):
        mosi_regression_metrics(preds, labels)
