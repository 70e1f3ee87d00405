"""Polyp segmentation metrics: paper @0.5 by hand, toolbox against hand values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from py_sod_metrics import DICEHandler, FmeasureV2, IOUHandler, Smeasure, WeightedFmeasure

from gpfuse.metrics import PAPER_METRICS, TOOLBOX_METRICS, PolypEvaluator

EPS = np.spacing(1)
TIGHT = dict(rel=1e-12, abs=1e-12)


def _scores(pairs, threshold: float = 0.5) -> dict[str, float]:
    ev = PolypEvaluator(threshold)
    for pred, gt in pairs:
        ev.update(pred, gt)
    return ev.compute()


def _mask(shape, *boxes) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


# ------------------------------------------------------------------------- independent references
def _stretch(u: np.ndarray) -> np.ndarray:
    """MATLAB ``mapminmax(u / 255, 0, 1)``; a constant map is left unchanged."""
    lo, hi = int(u.min()), int(u.max())
    return (u - lo) / (hi - lo) if hi > lo else u / 255.0


def _binaries(u: np.ndarray):
    """The 256 toolbox binarisations ``s >= k / 255`` (k = 0..255), evaluated exactly in integers."""
    lo, hi = int(u.min()), int(u.max())
    for k in range(256):
        yield 255 * (u - lo) >= k * (hi - lo) if hi > lo else u >= k


def _ref_em(b: np.ndarray, g: np.ndarray) -> float:
    """``Enhancedmeasure.m`` of the toolbox (Fan et al. 2018) on one binary map."""
    fm, gt = b.astype(float), g.astype(float)
    if gt.sum() == 0:
        enhanced = 1.0 - fm
    elif gt.all():
        enhanced = fm
    else:
        a, c = fm - fm.mean(), gt - gt.mean()
        enhanced = (2 * a * c / (a * a + c * c + EPS) + 1) ** 2 / 4
    return enhanced.sum() / (g.size - 1 + EPS)


def _ref_curves(u: np.ndarray, g: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """Dice, IoU (MATLAB ``Fmeasure_calu``: 0 when no true positive) and E-measure at the 256 thresholds."""
    dice, iou, em = [], [], []
    for b in _binaries(u):
        tp, n_p, n_g = int((b & g).sum()), int(b.sum()), int(g.sum())
        dice.append(0.0 if tp == 0 else 2 * tp / (n_p + n_g))
        iou.append(0.0 if tp == 0 else tp / (n_p + n_g - tp))
        em.append(_ref_em(b, g))
    return dice, iou, em


def _ref_sm(s: np.ndarray, g: np.ndarray, alpha: float = 0.5) -> float:
    """``StructureMeasure.m`` of the toolbox (Fan et al. 2017), transcribed with 1-based MATLAB indexing."""
    y = g.mean()
    if y == 0:
        return 1.0 - s.mean()
    if y == 1:
        return s.mean()

    def s_object(x):
        sd = x.std(ddof=1) if x.size > 1 else 0.0
        return 2.0 * x.mean() / (x.mean() ** 2 + 1.0 + sd + EPS)

    def ssim(p, t):
        n, t = p.size, t.astype(float)
        x, yy = p.mean(), t.mean()
        sx, sy = ((p - x) ** 2).sum() / (n - 1 + EPS), ((t - yy) ** 2).sum() / (n - 1 + EPS)
        sxy = ((p - x) * (t - yy)).sum() / (n - 1 + EPS)
        a, b = 4 * x * yy * sxy, (x * x + yy * yy) * (sx + sy)
        return a / (b + EPS) if a != 0 else (1.0 if b == 0 else 0.0)

    obj = y * s_object(s[g]) + (1 - y) * s_object(1.0 - s[~g])
    hei, wid = g.shape
    rows, cols = np.nonzero(g)
    X, Y = math.floor((cols + 1).mean() + 0.5), math.floor((rows + 1).mean() + 0.5)  # MATLAB round
    w1, w2, w3 = X * Y / g.size, (wid - X) * Y / g.size, X * (hei - Y) / g.size
    reg = (
        w1 * ssim(s[:Y, :X], g[:Y, :X])
        + w2 * ssim(s[:Y, X:], g[:Y, X:])
        + w3 * ssim(s[Y:, :X], g[Y:, :X])
        + (1 - w1 - w2 - w3) * ssim(s[Y:, X:], g[Y:, X:])
    )
    return max(0.0, alpha * obj + (1 - alpha) * reg)


# ------------------------------------------------------------------------------------------- keys
def test_keys_and_conventions_apart():
    assert PAPER_METRICS == ("Dice", "IoU", "Precision", "Recall")
    assert TOOLBOX_METRICS == ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")
    out = _scores([(np.full((4, 4), 0.7), _mask((4, 4), (0, 2, 0, 2)))])
    assert list(out) == [*PAPER_METRICS, *TOOLBOX_METRICS]
    assert all(type(v) is float for v in out.values())


# ------------------------------------------------------------------------------------ paper @ 0.5
def test_paper_metrics_by_hand():
    gt = _mask((4, 4), (0, 2, 0, 2))  # 4 pixels
    pred = np.full((4, 4), 0.1)
    pred[0, 0], pred[0, 1], pred[1, 0] = 0.9, 0.8, 0.51  # 3 true positives
    pred[1, 1] = 0.49  # a false negative just below the threshold
    pred[0, 2] = 0.5  # a false positive exactly at the threshold (>=)
    pred[2, 2] = 1.0  # another false positive
    out = _scores([(pred, gt)])
    # |P| = 5, |G| = 4, |P∩G| = 3, |P∪G| = 6
    assert out["Dice"] == pytest.approx(2 * 3 / 9, **TIGHT)
    assert out["IoU"] == pytest.approx(3 / 6, **TIGHT)
    assert out["Precision"] == pytest.approx(3 / 5, **TIGHT)
    assert out["Recall"] == pytest.approx(3 / 4, **TIGHT)
    # another threshold moves the boundary pixels: P = {0.9, 0.8, 1.0}
    out = _scores([(pred, gt)], threshold=0.6)
    assert (out["Dice"], out["IoU"], out["Precision"], out["Recall"]) == pytest.approx((4 / 7, 2 / 5, 2 / 3, 1 / 2))


@pytest.mark.parametrize(
    "pred_fg, gt_fg, expected",
    [
        (False, True, (0.0, 0.0, 0.0, 0.0)),  # empty prediction, polyp present: precision 0
        (True, False, (0.0, 0.0, 0.0, 0.0)),  # prediction on an empty mask: recall 0
        (False, False, (1.0, 1.0, 1.0, 1.0)),  # both empty: perfect
    ],
)
def test_paper_empty_cases(pred_fg, gt_fg, expected):
    pred = np.where(_mask((4, 4), (1, 3, 1, 3)), 0.9, 0.2) if pred_fg else np.full((4, 4), 0.2)
    gt = _mask((4, 4), (0, 2, 0, 2)) if gt_fg else np.zeros((4, 4), dtype=np.uint8)
    out = _scores([(pred, gt)])
    assert tuple(out[k] for k in PAPER_METRICS) == expected


def test_all_foreground_prediction_and_mask():
    out = _scores([(np.ones((4, 4)), np.ones((4, 4), dtype=np.uint8))])
    assert tuple(out[k] for k in PAPER_METRICS) == (1.0, 1.0, 1.0, 1.0)
    # toolbox: a constant map stays 1 (no stretch); all 256 thresholds give the full mask
    assert out["mDice"] == out["mIoU"] == 1.0
    assert out["Sm"] == pytest.approx(1.0, **TIGHT)  # all-foreground rule: mean(pred)
    assert out["MAE"] == 0.0
    assert out["wFm"] == pytest.approx(1.0, **TIGHT)
    assert out["meanEm"] == pytest.approx(16 / 15, **TIGHT)  # all-foreground E-measure: |P| / (N - 1)
    assert out["maxEm"] == pytest.approx(16 / 15, **TIGHT)


def test_paper_mean_over_images_and_gt_encodings():
    gt = _mask((4, 4), (0, 2, 0, 2))
    pred = np.where(_mask((4, 4), (0, 2, 0, 3)), 0.8, 0.0)  # 6 pixels, 4 on the polyp
    empty = np.zeros((4, 4))
    per_image = (2 * 4 / 10, 4 / 6, 4 / 6, 1.0)
    for g in (gt, gt.astype(np.uint8), gt.astype(np.float32), gt.astype(np.uint8) * 255, torch.from_numpy(gt)):
        out = _scores([(pred, g), (empty, np.zeros((4, 4), dtype=bool))])
        assert tuple(out[k] for k in PAPER_METRICS) == pytest.approx(tuple((v + 1) / 2 for v in per_image), **TIGHT)


def test_uint8_and_float_give_the_same_numbers():
    rng = np.random.default_rng(3)
    u = rng.integers(0, 256, size=(6, 6)).astype(np.uint8)
    u[0, 0], u[0, 1], u[0, 2] = 127, 128, 100  # 127/255 < 0.5 <= 128/255
    gt = _mask((6, 6), (1, 4, 2, 5))
    a = _scores([(u, gt)])
    b = _scores([(u / 255.0, gt)])  # round(255 * u / 255) == u
    c = _scores([(torch.from_numpy(u / 255.0).float(), torch.from_numpy(gt.astype(np.uint8)) * 255)])
    for key in a:
        assert a[key] == pytest.approx(b[key], **TIGHT) and a[key] == pytest.approx(c[key], **TIGHT)
    hand = _scores([(u.astype(np.float64) >= 128, gt)])  # the paper binarisation of the uint8 map
    assert tuple(a[k] for k in PAPER_METRICS) == tuple(hand[k] for k in PAPER_METRICS)


# ------------------------------------------------------------------------------------ toolbox
def test_mdice_miou_meanem_against_a_threshold_loop():
    rng = np.random.default_rng(0)
    prob = rng.random((6, 6))  # float map: levels round(255 p), stretched by min/max
    g1 = rng.random((6, 6)) < 0.4
    tie = np.array([0, 7, 14, 28, 35], dtype=np.uint8)[rng.integers(0, 5, size=(6, 6))]  # stretch /35:
    tie[0, :5] = [0, 7, 14, 28, 35]  # values on exact levels 0, 51, 102, 204, 255
    g2 = _mask((6, 6), (2, 5, 1, 4))
    out = _scores([(prob, g1), (tie, g2)])

    ref = [_ref_curves(np.floor(prob * 255 + 0.5).astype(int), g1), _ref_curves(tie.astype(int), g2)]
    assert out["mDice"] == pytest.approx(np.mean([np.mean(r[0]) for r in ref]), **TIGHT)
    assert out["mIoU"] == pytest.approx(np.mean([np.mean(r[1]) for r in ref]), **TIGHT)
    em_curve = np.mean([r[2] for r in ref], axis=0)  # image-averaged curve, then mean / max (main.m)
    assert out["meanEm"] == pytest.approx(em_curve.mean(), **TIGHT)
    assert out["maxEm"] == pytest.approx(em_curve.max(), **TIGHT)
    assert out["MAE"] == pytest.approx(
        np.mean(
            [np.abs(_stretch(np.floor(prob * 255 + 0.5)) - g1).mean(), np.abs(_stretch(tie.astype(int)) - g2).mean()]
        ),
        **TIGHT,
    )


def test_toolbox_matches_pysodmetrics_on_a_full_range_png():
    """On a map spanning 0..255 (what PraNet saves) the curves equal pysodmetrics' own normalisation."""
    rng = np.random.default_rng(1)
    u = rng.integers(0, 256, size=(8, 8)).astype(np.uint8)
    u[0, 0], u[7, 7] = 0, 255
    gt = _mask((8, 8), (2, 6, 1, 5))
    fm = FmeasureV2({"dice": DICEHandler(True, False), "iou": IOUHandler(True, False)})
    fm.step(u, gt.astype(np.uint8) * 255)
    wfm = WeightedFmeasure(beta=1)
    wfm.step(u, gt.astype(np.uint8) * 255)
    out = _scores([(u, gt)])
    assert out["mDice"] == pytest.approx(fm.get_results()["dice"]["dynamic"].mean(), **TIGHT)
    assert out["mIoU"] == pytest.approx(fm.get_results()["iou"]["dynamic"].mean(), **TIGHT)
    assert out["wFm"] == pytest.approx(wfm.get_results()["wfm"], **TIGHT)
    beta03 = WeightedFmeasure(beta=0.3)
    beta03.step(u, gt.astype(np.uint8) * 255)
    assert out["wFm"] != pytest.approx(beta03.get_results()["wfm"], rel=1e-3)  # beta^2 = 1, not 0.3


def test_mae_by_hand_with_stretch():
    gt = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    out = _scores([(np.array([[0, 255], [51, 204]], dtype=np.uint8), gt)])
    assert out["MAE"] == pytest.approx((0 + 0 + 0.8 + 0.8) / 4, **TIGHT)
    # floats 0.2 / 0.6 / 0.4 -> levels 51 / 153 / 102 -> stretched 0 / 1 / 0.5
    out = _scores([(np.array([[0.2, 0.6], [0.4, 0.6]]), gt)])
    assert out["MAE"] == pytest.approx((0 + 0 + 0.5 + 1.0) / 4, **TIGHT)


def test_perfect_prediction():
    gt = _mask((8, 8), (2, 5, 3, 7))
    out = _scores([(gt.astype(np.float64), gt)])
    n = gt.size
    assert out["Sm"] == pytest.approx(1.0, **TIGHT)
    assert out["wFm"] == pytest.approx(1.0, **TIGHT)
    assert out["MAE"] == 0.0
    # threshold 0 marks every pixel: Dice 2*12/(64+12), IoU 12/64; the 255 others are perfect
    assert out["mDice"] == pytest.approx((255 + 24 / 76) / 256, **TIGHT)
    assert out["mIoU"] == pytest.approx((255 + 12 / 64) / 256, **TIGHT)
    # E-measure divides by N - 1; threshold 0 (all foreground) aligns nothing and each pixel scores 1/4
    assert out["maxEm"] == pytest.approx(n / (n - 1), **TIGHT)
    assert out["meanEm"] == pytest.approx((255 + 0.25) / 256 * n / (n - 1), **TIGHT)


def test_smeasure_special_cases_by_hand():
    u = np.array([[0, 255, 51, 102], [204, 0, 0, 153], [255, 51, 0, 0], [0, 0, 102, 255]], dtype=np.uint8)
    mean = u.mean() / 255  # spans 0..255, so the stretch is the identity
    assert _scores([(u, np.zeros((4, 4), dtype=bool))])["Sm"] == pytest.approx(1 - mean, **TIGHT)
    assert _scores([(u, np.ones((4, 4), dtype=bool))])["Sm"] == pytest.approx(mean, **TIGHT)
    # floats 0.2 / 0.6 -> stretched to 0 / 1
    p = np.where(_mask((4, 4), (0, 1, 0, 3)), 0.6, 0.2)
    assert _scores([(p, np.zeros((4, 4)))])["Sm"] == pytest.approx(1 - 3 / 16, **TIGHT)


def test_smeasure_against_the_matlab_transcription():
    rng = np.random.default_rng(2)
    u = rng.integers(0, 256, size=(6, 6)).astype(np.uint8)
    cases = [
        _mask((6, 6), (0, 2, 0, 2)),  # 0-based centroid (0.5, 0.5): MATLAB rounds 1.5 -> 2
        _mask((6, 6), (1, 3, 1, 4)),  # centroid (1.5, 2): no tie issue
        rng.random((6, 6)) < 0.5,
    ]
    for g in cases:
        expected = _ref_sm(_stretch(u.astype(int)), g)
        assert _scores([(u, g)])["Sm"] == pytest.approx(expected, **TIGHT)
    # pysodmetrics rounds half to even there and splits the quadrants one pixel off
    sod = Smeasure()
    sod.step(u, cases[0].astype(np.uint8) * 255)
    assert sod.get_results()["sm"] != pytest.approx(_ref_sm(_stretch(u.astype(int)), cases[0]), rel=1e-6)


def test_smeasure_mask_in_last_column_is_finite():
    gt = _mask((6, 6), (1, 6, 5, 6))  # centroid on the last column: an empty quadrant
    s = _scores([(np.linspace(0, 1, 36).reshape(6, 6), gt)])["Sm"]
    assert math.isfinite(s) and 0.0 <= s <= 1.0


def test_emeasure_by_hand():
    gt = _mask((4, 4), (0, 2, 0, 2))  # mean 4/16
    pred = gt.copy()
    pred[0, 2] = True  # binary map, mean 5/16: 4 TP, 1 FP, 11 TN
    # alignment 2ab / (a^2 + b^2) with demeaned values (in 16ths): TP (11, 12), FP (11, -4), TN (-5, -4)
    tp, fp, tn = (264 / 265 + 1) ** 2 / 4, (-88 / 137 + 1) ** 2 / 4, (40 / 41 + 1) ** 2 / 4
    em_k = (4 * tp + 1 * fp + 11 * tn) / 15  # thresholds 1/255 .. 1
    em_0 = 16 * 0.25 / 15  # threshold 0: every pixel foreground, alignment 0
    out = _scores([(pred.astype(np.uint8) * 255, gt)])
    assert out["maxEm"] == pytest.approx(em_k, **TIGHT)
    assert out["meanEm"] == pytest.approx((255 * em_k + em_0) / 256, **TIGHT)
    # empty mask: E counts the background pixels; threshold 0 predicts all foreground -> 0
    out = _scores([(pred.astype(np.uint8) * 255, np.zeros((4, 4)))])
    assert out["maxEm"] == pytest.approx(11 / 15, **TIGHT)
    assert out["meanEm"] == pytest.approx(255 / 256 * 11 / 15, **TIGHT)


def test_toolbox_empty_cases():
    out = _scores([(np.zeros((4, 4)), np.zeros((4, 4)))])
    assert tuple(out[k] for k in PAPER_METRICS) == (1.0, 1.0, 1.0, 1.0)
    assert out["mDice"] == out["mIoU"] == 0.0  # no true positive at any threshold: 0 (Fmeasure_calu)
    assert out["wFm"] == 0.0  # empty mask (pysodmetrics; MATLAB gives NaN)
    assert out["Sm"] == 1.0 and out["MAE"] == 0.0
    gt = _mask((10, 10), (4, 6, 4, 6))  # interior polyp, an all-zero prediction
    out = _scores([(np.zeros((10, 10)), gt)])
    assert out["wFm"] == pytest.approx(0.0, abs=1e-12)
    assert out["mDice"] == pytest.approx(1 / 256 * 2 * 4 / (100 + 4), **TIGHT)  # only threshold 0 hits


# ------------------------------------------------------------------------------ batches and state
def test_update_batch_matches_update_and_reset():
    rng = np.random.default_rng(4)
    preds = torch.from_numpy(rng.random((3, 1, 6, 6))).float()
    gts = torch.from_numpy(rng.random((3, 6, 6)) < 0.3)
    ev = PolypEvaluator()
    ev.update_batch(preds, gts)
    assert ev.num_images == 3
    one = PolypEvaluator()
    for i in range(3):
        one.update(preds[i, 0].numpy(), gts[i].numpy())
    assert ev.compute() == one.compute()
    ev.reset()
    assert ev.num_images == 0
    ev.update_batch(preds[:1].numpy()[:, 0], gts[:1].numpy().astype(np.uint8) * 255)
    assert ev.num_images == 1


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "pred, gt, match",
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), r"pred shape \(4, 4\) and gt shape \(4, 5\) must match"),
        (np.full((4, 4), 1.5), np.zeros((4, 4)), r"\[0, 1\].*\[1\.5, 1\.5\]"),
        (np.full((4, 4), -0.1), np.zeros((4, 4)), r"must lie in \[0, 1\]"),
        (np.array([[0.2, np.nan], [0.1, 0.3]]), np.zeros((2, 2)), "pred contains 1 NaN"),
        (np.zeros((2, 2)), np.array([[0.0, np.nan], [1.0, 0.0]]), "gt contains 1 NaN"),
        (np.zeros((2, 2)), np.array([[0.0, 0.5], [1.0, 0.0]]), r"gt must be a binary mask.*\{0, 0\.5, 1\}"),
        (np.zeros((2, 2)), np.array([[0, 1], [255, 0]]), "binary mask"),
        (np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2)), "ambiguous"),
        (np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), "update_batch"),
        (np.zeros((0, 4)), np.zeros((0, 4)), "empty"),
    ],
)
def test_update_errors(pred, gt, match):
    ev = PolypEvaluator()
    with pytest.raises(ValueError, match=match):
        ev.update(pred, gt)
    assert ev.num_images == 0


def test_batch_errors_add_nothing():
    ev = PolypEvaluator()
    with pytest.raises(ValueError, match=r"preds shape \(2, 1, 4, 4\) and gts shape \(2, 4, 5\) must match"):
        ev.update_batch(np.zeros((2, 1, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, 1, H, W\)"):
        ev.update_batch(np.zeros((4, 4)), np.zeros((4, 4)))
    bad = np.zeros((2, 4, 4))
    bad[1, 0, 0] = np.nan  # the second image is bad: the first is not added either
    with pytest.raises(ValueError, match="NaN"):
        ev.update_batch(bad, np.zeros((2, 4, 4)))
    assert ev.num_images == 0


def test_compute_without_images_and_bad_threshold():
    with pytest.raises(ValueError, match="no image was added"):
        PolypEvaluator().compute()
    with pytest.raises(ValueError, match="threshold"):
        PolypEvaluator(1.5)
