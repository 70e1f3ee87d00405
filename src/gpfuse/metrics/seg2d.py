"""Binary polyp segmentation metrics in two conventions, reported side by side but never mixed.

Paper (``PAPER_METRICS``, the EA-DK paper's @0.5 numbers): per image, with P = {pred >= threshold}
(a uint8 map is read as pred / 255) and G the mask, ``Dice = 2|P∩G| / (|P| + |G|)``,
``IoU = |P∩G| / |P∪G|``, ``Precision = |P∩G| / |P|``, ``Recall = |P∩G| / |G|``, averaged over images.
An empty denominator scores 1 when P and G are both empty, else 0: both empty -> all four are 1; an empty
P on a non-empty G -> Precision 0 (and Dice = IoU = Recall = 0); a non-empty P on an empty G -> Recall 0.
No eps anywhere. No min-max stretch: the raw probabilities are thresholded.

Toolbox (``TOOLBOX_METRICS``): ``eval/main.m`` of PraNet's MATLAB toolbox (Fan et al., MICCAI 2020), with the
measures of ``pysodmetrics`` (``py_sod_metrics``), which ports that toolbox's MATLAB code. Per image:

* the prediction becomes the 8-bit PNG that PraNet saves: ``u = floor(255 * p + 0.5)`` (round half up) for a
  float map, ``u = pred`` for a uint8 map; the mask is boolean (main.m reads ``gt > 128``);
* ``main.m`` stretches it, ``s = mapminmax(u / 255, 0, 1) = (u - min u) / (max u - min u)`` (a constant map
  is left as ``u / 255``, as mapminmax and pysodmetrics do), so the toolbox values ignore the offset and
  scale of the map (up to the 8-bit rounding); MAE, Sm and wFm are computed on ``s``;
* the 256 thresholds ``1:-1/255:0`` binarise ``s >= k / 255``; here the level ``k`` is taken exactly in
  integers, ``255 (u - min u) >= k (max u - min u)``. (pysodmetrics' ``floor(s * 255)`` drops a value that
  lies exactly on a threshold to the level below for ~1.4% of the (value, min, max) triples, e.g. u = 7 of
  0..35; on a map spanning 0..255 -- what PraNet saves, its ``test.py`` stretching before saving -- the two agree.)

``mDice`` / ``mIoU``: Dice / IoU at each threshold, where a threshold with no true positive scores 0 (MATLAB
``Fmeasure_calu``; also when P and G are both empty, unlike the paper rule), mean over the 256 thresholds, mean
over images (= mean of pysodmetrics' image-averaged dynamic curve). ``meanEm`` / ``maxEm``: mean / max over
thresholds of the image-averaged E-measure curve (Fan et al., IJCAI 2018, toolbox ``Enhancedmeasure``). The
toolbox divides the enhanced-alignment sum by ``H*W - 1``, so a perfect map scores ``H*W / (H*W - 1)`` at a
threshold (1 + 8e-6 at 352x352) and its meanEm is ``(255 + 1/4) / 256 * H*W / (H*W - 1)`` (threshold 0
marks every pixel foreground, where the alignment is 0 and each pixel scores 1/4). ``Sm``: S-measure
(Fan et al., ICCV 2017), alpha = 0.5; the quadrant split uses MATLAB's ``round`` (half away from zero) of the
1-based mask centroid, where pysodmetrics rounds half to even on 0-based coordinates. ``wFm``: weighted
F-measure (Margolin et al., CVPR 2014) with beta^2 = 1 (toolbox ``original_WFb``: ``Q = 2RP / (eps + R + P)``;
pysodmetrics' ``beta=1`` is beta^2); an empty mask scores 0 (pysodmetrics; MATLAB gives NaN). ``MAE``:
``mean |s - G|``. All are means over images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from py_sod_metrics import MAE, DICEHandler, Emeasure, FmeasureV2, IOUHandler, Smeasure, WeightedFmeasure

from gpfuse.metrics.arrays import as_numeric_array

__all__ = ["PAPER_METRICS", "RECORD_SIZE", "TOOLBOX_METRICS", "PolypEvaluator", "polyp_scores"]

PAPER_METRICS = ("Dice", "IoU", "Precision", "Recall")
TOOLBOX_METRICS = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")
#: one image's record: Dice, IoU, Precision, Recall (paper), Sm, wFm, MAE, then the 256-threshold E-measure,
#: Dice and IoU curves (toolbox); every metric is a mean over images of these records
RECORD_SIZE = 4 + 3 + 3 * 256
_EM, _DICE, _IOU = (slice(7 + k * 256, 7 + (k + 1) * 256) for k in range(3))


# ----------------------------------------------------------------------------------------- inputs
def _as_batch(x: Any, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(B, H, W) array of a (B, H, W) or (B, 1, H, W) batch, and the shape as given."""
    arr = as_numeric_array(x, name)
    shape = arr.shape
    if arr.ndim == 4 and shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim != 3:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W), got {shape}")
    return arr, shape


def _pred_levels(pred: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities as float64 in [0, 1], 8-bit levels as int64 in 0..255) of a prediction of any shape.

    float: probabilities, levels ``floor(255 p + 0.5)``; uint8: levels, probabilities ``u / 255``;
    bool: a hard mask (0 or 1, levels 0 or 255). Other integer dtypes are ambiguous and refused.
    """
    if pred.dtype == np.uint8:
        levels = pred.astype(np.int64)
        return levels / 255.0, levels
    if pred.dtype == np.bool_:
        return pred.astype(np.float64), pred.astype(np.int64) * 255
    if pred.dtype.kind != "f":
        raise ValueError(
            f"{name} of dtype {pred.dtype} is ambiguous: pass float probabilities in [0, 1] or a uint8 map in 0..255"
        )
    prob = pred.astype(np.float64)
    nan = int(np.isnan(prob).sum())
    if nan:
        raise ValueError(f"{name} contains {nan} NaN values")
    lo, hi = float(prob.min()), float(prob.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} values must lie in [0, 1] for a float map, got values in [{lo:g}, {hi:g}] "
            "(pass a uint8 array for a 0..255 map)"
        )
    return prob, np.floor(prob * 255.0 + 0.5).astype(np.int64)


def _gt_mask(gt: np.ndarray, name: str) -> np.ndarray:
    """Boolean mask of a binary ground truth: bool, {0, 1} or {0, 255} (any numeric dtype)."""
    if gt.dtype == np.bool_:
        return gt
    if gt.dtype.kind == "f":
        nan = int(np.isnan(gt).sum())
        if nan:
            raise ValueError(f"{name} contains {nan} NaN values")
    mask = gt != 0
    fg = gt[mask]
    if fg.size and not (np.all(fg == 1) or np.all(fg == 255)):
        values = np.unique(gt)
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise ValueError(f"{name} must be a binary mask (bool, {{0, 1}} or {{0, 255}}), got values {{{shown}}}")
    return mask


def _check_pair(pred: np.ndarray, gt: np.ndarray, shapes: tuple[tuple, tuple], names: tuple[str, str]) -> None:
    """Same shape (as compared; ``shapes`` as given, for the message) and at least one pixel."""
    if pred.shape != gt.shape:
        raise ValueError(f"{names[0]} shape {tuple(shapes[0])} and {names[1]} shape {tuple(shapes[1])} must match")
    if pred.size == 0:
        raise ValueError(f"{names[0]} is empty (shape {tuple(shapes[0])})")


# ------------------------------------------------------------------------------------------ paper
def _paper_scores(pos: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float]:
    """(Dice, IoU, Precision, Recall) of one binary prediction; empty denominators: see the module doc."""
    tp = int(np.count_nonzero(pos & gt))
    n_pred, n_gt = int(np.count_nonzero(pos)), int(np.count_nonzero(gt))
    union = n_pred + n_gt - tp
    if union == 0:  # P and G both empty: a perfect answer
        return 1.0, 1.0, 1.0, 1.0
    precision = tp / n_pred if n_pred else 0.0  # empty P, non-empty G
    recall = tp / n_gt if n_gt else 0.0  # empty G, non-empty P
    return 2.0 * tp / (n_pred + n_gt), tp / union, precision, recall


# ---------------------------------------------------------------------------------------- toolbox
class _ToolboxSmeasure(Smeasure):
    """pysodmetrics' S-measure with the MATLAB ``centroid`` of the toolbox: ``round`` (half away from zero) of
    the 1-based centroid, computed exactly in integers. pysodmetrics rounds the 0-based centroid half to even,
    which moves the quadrant split by one pixel when the centroid is ``2n + 0.5`` (0-based). A quadrant with no
    pixel (mask only in the last row / column) has weight 0 and adds 0 (MATLAB and pysodmetrics give NaN)."""

    def region(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Called by ``Smeasure.cal_sm`` only for a mask with foreground and background (0 < mean < 1)."""
        h, w = gt.shape
        total = int(np.count_nonzero(gt))
        rows, cols = np.nonzero(gt)
        sy, sx = int(rows.sum()) + total, int(cols.sum()) + total  # sums of 1-based coordinates
        cy, cx = (2 * sy + total) // (2 * total), (2 * sx + total) // (2 * total)
        area = h * w
        w_lt, w_rt, w_lb = cx * cy / area, cy * (w - cx) / area, (h - cy) * cx / area
        parts = (
            (w_lt, slice(0, cy), slice(0, cx)),
            (w_rt, slice(0, cy), slice(cx, w)),
            (w_lb, slice(cy, h), slice(0, cx)),
            (1 - w_lt - w_rt - w_lb, slice(cy, h), slice(cx, w)),
        )
        return sum(wt * self.ssim(pred[r, c], gt[r, c]) for wt, r, c in parts if pred[r, c].size)


class PolypEvaluator:
    """Accumulates per-image polyp segmentation metrics; ``compute`` returns both conventions (module doc).

    Args:
        threshold: binarisation threshold of the paper metrics, ``pred >= threshold`` (uint8: ``pred / 255``).

    Example::

        ev = PolypEvaluator()
        for prob, mask in loader:          # prob (B, 1, H, W) sigmoid output, mask (B, 1, H, W) in {0, 1}
            ev.update_batch(prob, mask)
        scores = ev.compute()              # {"Dice": ..., ..., "MAE": ...}
    """

    def __init__(self, threshold: float = 0.5) -> None:
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Forget every image added so far."""
        self._records: list[np.ndarray] = []
        self._sm = _ToolboxSmeasure(alpha=0.5)
        self._wfm = WeightedFmeasure(beta=1)
        self._mae = MAE()
        self._em = Emeasure()
        self._fm = FmeasureV2(
            {
                "dice": DICEHandler(with_dynamic=True, with_adaptive=False),
                "iou": IOUHandler(with_dynamic=True, with_adaptive=False),
            }
        )

    @property
    def num_images(self) -> int:
        """Number of images added since the last ``reset``."""
        return len(self._records)

    @property
    def records(self) -> np.ndarray:
        """(N, RECORD_SIZE) float64 per-image records, in the order added (:func:`polyp_scores` turns any
        set of them, e.g. gathered from several processes, into the metrics)."""
        return np.stack(self._records) if self._records else np.zeros((0, RECORD_SIZE))

    def update(self, pred: Any, gt: Any) -> None:
        """Add one image.

        Args:
            pred: (H, W) probabilities in [0, 1] (float numpy array or torch tensor), a uint8 map in 0..255,
                or a bool mask.
            gt: (H, W) binary mask: bool, {0, 1} or {0, 255}.

        Raises:
            ValueError: different shapes, not 2-D, empty, NaN, float values outside [0, 1], ambiguous pred
                dtype (integers other than uint8), or a non-binary ``gt``.
        """
        p, g = as_numeric_array(pred, "pred"), as_numeric_array(gt, "gt")
        _check_pair(p, g, (p.shape, g.shape), ("pred", "gt"))
        if p.ndim != 2:
            raise ValueError(
                f"update takes one (H, W) image, got shape {p.shape}; use update_batch for "
                "(B, H, W) or (B, 1, H, W) batches"
            )
        prob, levels = _pred_levels(p, "pred")
        self._add(prob, levels, _gt_mask(g, "gt"))

    def update_batch(self, preds: Any, gts: Any) -> None:
        """Add a batch of (B, H, W) or (B, 1, H, W) predictions and masks (same rules as ``update``). The whole
        batch is validated before any image is added."""
        p, p_shape = _as_batch(preds, "preds")
        g, g_shape = _as_batch(gts, "gts")
        _check_pair(p, g, (p_shape, g_shape), ("preds", "gts"))
        prob, levels = _pred_levels(p, "preds")
        mask = _gt_mask(g, "gts")
        for i in range(p.shape[0]):
            self._add(prob[i], levels[i], mask[i])

    def _add(self, prob: np.ndarray, levels: np.ndarray, gt: np.ndarray) -> None:
        """One validated image: probabilities (paper), 8-bit levels (toolbox), boolean mask -> one record."""
        paper = _paper_scores(prob >= self.threshold, gt)
        lo, hi = int(levels.min()), int(levels.max())
        if hi > lo:  # mapminmax; thresholds s >= k/255 <=> 255 (u - lo) >= k (hi - lo), exactly
            shifted = levels - lo
            stretched = shifted / float(hi - lo)
            quantized = (255 * shifted) // (hi - lo)
        else:
            stretched, quantized = levels / 255.0, levels
        # q / 255 * 255 == q exactly for q in 0..255, so pysodmetrics' floor(x * 255) recovers the level.
        on_levels = quantized / 255.0
        # pysodmetrics' accumulators each append one value (or curve) per step: take it back as this image's
        self._sm.step(stretched, gt, normalize=False)
        self._wfm.step(stretched, gt, normalize=False)
        self._mae.step(stretched, gt, normalize=False)
        self._em.step(on_levels, gt, normalize=False)
        self._fm.step(on_levels, gt, normalize=False)
        handlers = self._fm._metric_handlers
        self._em.adaptive_ems.pop()
        self._records.append(
            np.concatenate(
                [
                    paper,
                    [self._sm.sms.pop(), self._wfm.weighted_fms.pop(), self._mae.maes.pop()],
                    self._em.changeable_ems.pop(),
                    handlers["dice"].dynamic_results.pop(),
                    handlers["iou"].dynamic_results.pop(),
                ]
            ).astype(np.float64)
        )

    def compute(self) -> dict[str, float]:
        """Means over the images added: ``PAPER_METRICS`` then ``TOOLBOX_METRICS`` keys, Python floats.

        Raises:
            ValueError: no image was added.
        """
        if not self._records:
            raise ValueError("no image was added: call update() or update_batch() before compute()")
        return polyp_scores(self.records)


def polyp_scores(records: np.ndarray) -> dict[str, float]:
    """The paper and toolbox metrics (module doc) of (N, RECORD_SIZE) per-image records: means over images,
    the toolbox's curves averaged over images before the mean or max over thresholds."""
    records = np.asarray(records, dtype=np.float64)
    if records.ndim != 2 or records.shape[1] != RECORD_SIZE or not len(records):
        raise ValueError(f"records must have shape (N >= 1, {RECORD_SIZE}), got {records.shape}")
    means = records.mean(axis=0)
    out = dict(zip(PAPER_METRICS, (float(v) for v in means[:4])))
    out.update(
        mDice=float(np.mean(means[_DICE])),
        mIoU=float(np.mean(means[_IOU])),
        wFm=float(means[5]),
        Sm=float(means[4]),
        meanEm=float(np.mean(means[_EM])),
        maxEm=float(np.max(means[_EM])),
        MAE=float(means[6]),
    )
    return out
