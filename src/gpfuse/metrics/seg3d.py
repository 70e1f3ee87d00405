"""Multi-class 3-D segmentation metrics (Dice, HD95, NSD) computed through MONAI, with an explicit empty rule.

Inputs are integer label maps of shape (X, Y, Z) with values in ``0..num_classes - 1``; class 0 is the
background and is not scored. Each class ``c = 1..num_classes - 1`` is scored on the one-hot tensors
(1, C, X, Y, Z) of prediction P and label G (on CPU), with ``spacing`` the voxel size in mm along X, Y, Z:

* ``dice``: ``2|P∩G| / (|P| + |G|)``, MONAI ``compute_dice(include_background=False)``.
* ``hd95`` (mm): MONAI ``compute_hausdorff_distance(percentile=95, spacing=spacing)``. Its convention: the
  edge of a mask is the set of its voxels removed by a binary erosion (scipy, 6-connected; outside the volume
  counts as background); the distances are exact Euclidean distances in mm between edge-voxel centres (each
  edge voxel of one mask to the nearest edge voxel of the other); the 95th percentile (``torch.quantile``,
  linear interpolation) is taken in each direction and HD95 is the larger of the two. This is MONAI's HD95,
  voxel-counted and unweighted, not DeepMind's area-weighted ``compute_robust_hausdorff``.
* ``nsd``: normalised surface Dice at ``tolerance_mm`` (Nikolov et al. 2021, "Clinically applicable
  segmentation of head and neck anatomy for radiotherapy", DeepMind ``surface-distance``), MONAI
  ``compute_surface_dice(class_thresholds=[tolerance_mm] * (C - 1), spacing=spacing, use_subvoxels=True)``:
  ``NSD = (sum of surfel areas of G within tolerance of P's surface + the same for P) / (area of G + area
  of P)``, a surface element counting when its distance to the other surface is ``<= tolerance_mm``.
  ``use_subvoxels=True`` is what makes this the original, area-weighted NSD (checked in MONAI 1.6.1,
  ``monai/metrics/utils.py`` ``get_mask_edges`` and ``create_table_neighbour_code_to_surface_area``,
  ``surface_dice.py`` ``compute_surface_dice``), step by step as DeepMind's ``compute_surface_distances``
  and ``compute_surface_dice_at_tolerance``: the masks are cropped to the bounding box of P∪G with a
  one-voxel zero margin; each 2x2x2 neighbourhood gets the code of the kernel
  ``[[[128, 64], [32, 16]], [[8, 4], [2, 1]]]`` (DeepMind's ``ENCODE_NEIGHBOURHOOD_3D_KERNEL``, a
  cross-correlation); surfels are the neighbourhoods whose code is neither 0 nor 255; a surfel's area is the
  sum over its marching-cubes triangles of ``|n * (s1 s2, s0 s2, s0 s1)|`` (DeepMind's normals table and
  spacing scaling); distances are exact Euclidean distances in mm between surfel centres (a KD-tree where
  DeepMind uses ``distance_transform_edt(sampling=spacing_mm)`` on the same grid: the same values); the
  sums of areas at distance ``<= tolerance`` over the total area give the NSD. With the default
  ``use_subvoxels=False`` MONAI instead counts edge voxels, each with weight 1 (not the original NSD).

Empty structures (``EMPTY_RULE``): MONAI returns NaN or inf when a class is absent from P or G (and the public
BiPVL evaluation drops such cases); here every case is scored, so no NaN or inf is ever returned:

* absent from both P and G: dice 1, hd95 0, nsd 1 (a perfect answer);
* absent from exactly one of them: dice 0, nsd 0, hd95 = the volume diagonal
  ``sqrt(sum_i (shape_i * spacing_i)^2)`` mm, larger than any distance between two voxel centres of the volume.

``mean_*`` are means over the classes 1..C-1; ``summarise_cases`` averages over cases.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gpfuse.metrics.arrays import as_numeric_array

__all__ = ["EMPTY_RULE", "summarise_cases", "volume_metrics"]

EMPTY_RULE: str = (
    "empty structures are scored, never dropped: a class absent from both label and prediction "
    "scores dice 1, hd95 0 mm, nsd 1; absent from exactly one of them: dice 0, nsd 0, hd95 = the "
    "volume diagonal sqrt(sum((shape_i * spacing_i)^2)) mm"
)

_PER_CLASS = ("dice", "hd95", "nsd")
_MEANS = ("mean_dice", "mean_hd95", "mean_nsd")
# MONAI warns on every empty class (those cases are handled by EMPTY_RULE), and MONAI 1.6.1 passes its own
# deprecated ``always_return_as_numpy`` to ``get_mask_edges``: both warnings are silenced, nothing else.
_EMPTY_WARNING = r"the (ground truth|prediction) of class .* is all 0"
_MONAI_INTERNAL_WARNING = r".*get_mask_edges:always_return_as_numpy"


# ----------------------------------------------------------------------------------------- inputs
def _check_values(arr: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """(X, Y, Z) int64 labels, or ValueError naming the values outside ``0..num_classes - 1``."""
    values = np.unique(arr)
    bad = values[~np.isin(values, np.arange(num_classes))]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise ValueError(f"{name} must hold integer labels in 0..{num_classes - 1}, got {{{shown}}}")
    return arr.astype(np.int64)


def _check_spacing(spacing: Any) -> tuple[float, float, float]:
    """Three finite positive voxel sizes in mm."""
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as err:
        raise ValueError(f"spacing must be 3 positive numbers (mm along X, Y, Z), got {spacing!r}") from err
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive numbers (mm along X, Y, Z), got {spacing!r}")
    return sp


def _one_hot(arr: np.ndarray, num_classes: int) -> torch.Tensor:
    """(X, Y, Z) labels -> (1, C, X, Y, Z) float32 one-hot tensor."""
    oh = torch.nn.functional.one_hot(torch.from_numpy(arr), num_classes)
    return oh.permute(3, 0, 1, 2).unsqueeze(0).float()


# ---------------------------------------------------------------------------------------- metrics
def volume_metrics(
    pred: Any, label: Any, num_classes: int, spacing: Sequence[float] = (1.0, 1.0, 1.0), tolerance_mm: float = 2.0
) -> dict[str, Any]:
    """Dice, HD95 (mm) and NSD at ``tolerance_mm`` of one volume, per class 1..num_classes-1 (module doc).

    Args:
        pred: (X, Y, Z) predicted labels (numpy array or torch tensor on any device), values in
            ``0..num_classes - 1``; float arrays are accepted when their values are such integers.
        label: (X, Y, Z) reference labels, same rules.
        num_classes: number of classes, background included (>= 2).
        spacing: voxel size in mm along X, Y, Z (3 positive numbers).
        tolerance_mm: NSD tolerance in mm (finite, >= 0).

    Returns:
        ``{"dice": [...], "hd95": [...], "nsd": [...]}`` (Python floats, one per class 1..num_classes-1) and
        ``"mean_dice"``, ``"mean_hd95"``, ``"mean_nsd"``, their means over classes. Never NaN or inf
        (``EMPTY_RULE``).

    Raises:
        ValueError: different shapes, not 3-D, empty volume, labels outside ``0..num_classes - 1``, bad
            ``num_classes``, ``spacing`` or ``tolerance_mm``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}")
    num_classes = int(num_classes)
    sp = _check_spacing(spacing)
    tol = float(tolerance_mm)
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")
    p, g = as_numeric_array(pred, "pred"), as_numeric_array(label, "label")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} and label shape {tuple(g.shape)} must match")
    if p.ndim != 3:
        raise ValueError(f"pred and label must be 3-D label maps (X, Y, Z), got shape {tuple(p.shape)}")
    if p.size == 0:
        raise ValueError(f"pred and label are empty (shape {tuple(p.shape)})")
    p, g = _check_values(p, "pred", num_classes), _check_values(g, "label", num_classes)

    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice  # heavy import

    y_pred, y = _one_hot(p, num_classes), _one_hot(g, num_classes)
    # full precision even when called inside a mixed-precision region (MONAI's surface code convolves)
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False):
        warnings.filterwarnings("ignore", message=_EMPTY_WARNING)
        warnings.filterwarnings("ignore", message=_MONAI_INTERNAL_WARNING, category=FutureWarning)
        dice = compute_dice(y_pred, y, include_background=False, ignore_empty=False)[0]
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=list(sp))[0]
        nsd = compute_surface_dice(
            y_pred,
            y,
            class_thresholds=[tol] * (num_classes - 1),
            include_background=False,
            spacing=list(sp),
            use_subvoxels=True,
        )[0]

    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp)))
    n_pred = np.bincount(p.ravel(), minlength=num_classes)
    n_label = np.bincount(g.ravel(), minlength=num_classes)
    out: dict[str, Any] = {"dice": [], "hd95": [], "nsd": []}
    for i, c in enumerate(range(1, num_classes)):
        if n_pred[c] == 0 and n_label[c] == 0:
            values = (1.0, 0.0, 1.0)
        elif n_pred[c] == 0 or n_label[c] == 0:
            values = (0.0, diagonal, 0.0)
        else:
            values = (float(dice[i]), float(hd95[i]), float(nsd[i]))
            if not all(math.isfinite(v) for v in values):  # both masks non-empty: MONAI is finite
                raise RuntimeError(f"MONAI returned a non-finite value for class {c}: {values}")
        for key, v in zip(_PER_CLASS, values):
            out[key].append(v)
    for key, mean_key in zip(_PER_CLASS, _MEANS):
        out[mean_key] = float(np.mean(out[key]))
    return out


def summarise_cases(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean over cases of ``volume_metrics`` results: per-class lists element-wise, means as means, plus
    ``"cases"``: the number of cases.

    Raises:
        ValueError: no case, a result missing a key, or results with different numbers of classes.
    """
    results = list(results)
    if not results:
        raise ValueError("summarise_cases needs at least one result")
    for i, r in enumerate(results):
        missing = [k for k in _PER_CLASS + _MEANS if k not in r]
        if missing:
            raise ValueError(f"result {i} lacks {missing}: pass the dicts returned by volume_metrics")
    n_cls = {len(r[k]) for r in results for k in _PER_CLASS}
    if len(n_cls) != 1:
        raise ValueError(f"results have different numbers of classes: {sorted(n_cls)}")
    out: dict[str, Any] = {}
    for key in _PER_CLASS:
        out[key] = [float(v) for v in np.mean(np.asarray([r[key] for r in results], dtype=np.float64), axis=0)]
    for key in _MEANS:
        out[key] = float(np.mean([r[key] for r in results]))
    out["cases"] = len(results)
    return out
