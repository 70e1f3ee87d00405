"""3-D segmentation metrics: Dice, HD95 and NSD by hand, NSD against a brute-force DeepMind surfel model, the
empty rule, the summary over cases and the input errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gpfuse.metrics import EMPTY_RULE, summarise_cases, volume_metrics

F32 = dict(rel=1e-6, abs=1e-6)  # MONAI computes in float32


def _vol(shape, *boxes) -> np.ndarray:
    """int64 label map with ``(value, (x0, x1), (y0, y1), (z0, z1))`` half-open boxes painted in order."""
    v = np.zeros(shape, dtype=np.int64)
    for value, (x0, x1), (y0, y1), (z0, z1) in boxes:
        v[x0:x1, y0:y1, z0:z1] = value
    return v


def _finite(res: dict) -> bool:
    values = [v for k in ("dice", "hd95", "nsd") for v in res[k]] + [
        res[k] for k in ("mean_dice", "mean_hd95", "mean_nsd")
    ]
    return all(math.isfinite(v) for v in values)


# ---------------------------------------------------------------------- brute-force NSD of two boxes
def _box_surfels(box, spacing):
    """Surface elements of one axis-aligned box of voxels as DeepMind's ``compute_surface_distances`` defines
    them: one per 2x2x2 neighbourhood holding some but not all voxels of the box. The neighbourhood at corner
    position q covers voxels q-1 and q on each axis, so for a box [a, b) the positions a..b are on its surface
    along an axis when q is a or b. Marching-cubes surface of the neighbourhood, in closed form:
    boundary along one axis i (4 voxels): the rectangle s_j * s_k; along two axes i, j (2 voxels, an edge along
    k): s_k * sqrt(s_i^2 + s_j^2) / 2; along three (1 voxel): the corner triangle
    sqrt((s1 s2)^2 + (s0 s2)^2 + (s0 s1)^2) / 8. Returns (centres in mm (N, 3), areas (N,))."""
    s = np.asarray(spacing, dtype=np.float64)
    corner = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2) / 8
    centres, areas = [], []
    for q in itertools.product(*(range(a, b + 1) for a, b in box)):
        on = [q[i] in box[i] for i in range(3)]
        k = sum(on)
        if k == 0:
            continue
        if k == 1:
            i = on.index(True)
            area = np.prod(np.delete(s, i))
        elif k == 2:
            axis = on.index(False)
            i, j = (a for a in range(3) if a != axis)
            area = s[axis] * math.hypot(s[i], s[j]) / 2
        else:
            area = corner
        centres.append(np.asarray(q, dtype=np.float64) * s)
        areas.append(area)
    return np.asarray(centres), np.asarray(areas)


def _brute_nsd(box_a, box_b, spacing, tol):
    """NSD of two boxes: area-weighted fraction of surfels within ``tol`` mm of the other surface (both ways);
    also returns every surfel-to-surface distance, to keep the tolerance away from ties."""
    ca, aa = _box_surfels(box_a, spacing)
    cb, ab = _box_surfels(box_b, spacing)
    d = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1)
    da, db = d.min(axis=1), d.min(axis=0)
    nsd = (aa[da <= tol].sum() + ab[db <= tol].sum()) / (aa.sum() + ab.sum())
    return nsd, np.concatenate([da, db])


# ------------------------------------------------------------------------------------------- dice
def test_dice_by_hand_two_classes_and_torch_input():
    shape = (6, 6, 6)
    label = _vol(shape, (1, (0, 3), (0, 3), (0, 3)), (2, (4, 6), (0, 6), (4, 6)))
    pred = _vol(shape, (1, (1, 4), (1, 4), (1, 4)), (2, (4, 6), (0, 3), (4, 6)))
    res = volume_metrics(pred, label, num_classes=3)
    # class 1: two 3^3 cubes overlapping in 2^3 = 8 voxels; class 2: 12 predicted voxels inside 24 labelled ones
    assert res["dice"] == pytest.approx([2 * 8 / (27 + 27), 2 * 12 / (12 + 24)], **F32)
    assert res["mean_dice"] == pytest.approx((8 / 27 + 2 / 3) / 2, **F32)
    assert len(res["hd95"]) == len(res["nsd"]) == 2 and _finite(res)
    # torch tensors (and a float map of integral values) give the same numbers
    assert volume_metrics(torch.from_numpy(pred), torch.from_numpy(label).float(), num_classes=3) == res


# ------------------------------------------------------------------------------------------- hd95
def test_hd95_single_voxel_shift_follows_anisotropic_spacing():
    shape = (7, 6, 6)
    label = _vol(shape, (1, (1, 2), (2, 3), (2, 3)))
    pred = _vol(shape, (1, (4, 5), (2, 3), (2, 3)))  # 3 voxels along X
    assert volume_metrics(pred, label, 2, spacing=(2.0, 1.0, 1.0))["hd95"] == pytest.approx([6.0], **F32)
    assert volume_metrics(pred, label, 2, spacing=(1.0, 1.0, 2.0))["hd95"] == pytest.approx([3.0], **F32)
    assert volume_metrics(pred, label, 2, spacing=(0.5, 3.0, 3.0))["hd95"] == pytest.approx([1.5], **F32)


def test_hd95_thin_slab_shift_and_swapped_spacing():
    shape = (6, 5, 4)
    label = _vol(shape, (1, (1, 2), (0, 5), (0, 4)))  # a one-voxel slab spanning the Y-Z plane
    pred = _vol(shape, (1, (3, 4), (0, 5), (0, 4)))  # shifted by 2 voxels along X
    assert volume_metrics(pred, label, 2, spacing=(0.5, 3.0, 3.0))["hd95"] == pytest.approx([1.0], **F32)
    assert volume_metrics(pred, label, 2, spacing=(3.0, 0.5, 3.0))["hd95"] == pytest.approx([6.0], **F32)
    # the same slabs stacked along Z instead: now spacing[2] is the one that counts
    label_z, pred_z = np.moveaxis(label, 0, 2), np.moveaxis(pred, 0, 2)
    assert volume_metrics(pred_z, label_z, 2, spacing=(3.0, 3.0, 0.5))["hd95"] == pytest.approx([1.0], **F32)
    assert volume_metrics(pred_z, label_z, 2, spacing=(0.5, 3.0, 3.0))["hd95"] == pytest.approx([6.0], **F32)


# -------------------------------------------------------------------------------------------- nsd
def test_nsd_perfect_prediction_is_one():
    x, y, z = np.meshgrid(np.arange(9), np.arange(8), np.arange(7), indexing="ij")
    ball = ((x - 4) ** 2 + (y - 3.5) ** 2 + (z - 3) ** 2 <= 9).astype(np.int64)
    label = ball + 2 * (x == 8) * (y < 2)
    res = volume_metrics(label, label, 3, spacing=(0.7, 1.1, 2.5), tolerance_mm=0.0)
    assert res["nsd"] == [1.0, 1.0] and res["dice"] == [1.0, 1.0] and res["hd95"] == [0.0, 0.0]


@pytest.mark.parametrize(
    "spacing, tol, expected",
    [
        ((1.0, 1.0, 1.0), 1.5, 0.0),  # facing layers 2 mm apart, far layers 3 mm: nothing within 1.5 mm
        ((1.0, 1.0, 1.0), 2.5, 0.5),  # only the two facing layers (half of each plate's area) count
        ((1.0, 1.0, 1.0), 3.5, 1.0),
        ((0.5, 1.0, 1.0), 1.2, 0.5),  # X spacing 0.5: facing 1.0 mm, far 1.5 mm
        ((1.0, 1.0, 0.5), 1.2, 0.0),  # the Z spacing does not shorten an X shift: 2 and 3 mm
    ],
)
def test_nsd_parallel_plates(spacing, tol, expected):
    """Two one-voxel plates spanning the Y-Z plane, 3 voxels apart along X. Each plate's surface is two
    mirror-image layers of surfels (equal areas) at corner positions x = 2, 3 (label) and 5, 6 (prediction);
    every surfel has a partner at the same (y, z) on the other plate, so the facing layers (3 and 5) are
    2 * spacing[0] from the other surface and the far layers 3 * spacing[0]."""
    shape = (10, 5, 6)
    label = _vol(shape, (1, (2, 3), (0, 5), (0, 6)))
    pred = _vol(shape, (1, (5, 6), (0, 5), (0, 6)))
    res = volume_metrics(pred, label, 2, spacing=spacing, tolerance_mm=tol)
    assert res["nsd"] == pytest.approx([expected], **F32)
    assert res["dice"] == [0.0]


def test_nsd_shift_within_tolerance_is_one():
    shape = (8, 7, 7)
    label = _vol(shape, (1, (1, 5), (1, 6), (2, 5)))
    pred = _vol(shape, (1, (2, 6), (1, 6), (2, 5)))  # one voxel along X: every surfel within 1.5 mm
    assert volume_metrics(pred, label, 2, spacing=(1.5, 1.0, 1.0), tolerance_mm=2.0)["nsd"] == [1.0]
    assert volume_metrics(pred, label, 2, spacing=(1.5, 1.0, 1.0), tolerance_mm=1.0)["nsd"][0] < 1.0


@pytest.mark.parametrize("spacing, tol", [((0.8, 1.3, 2.1), 2.0), ((1.0, 1.0, 1.0), 1.3), ((2.0, 0.6, 1.0), 1.7)])
def test_nsd_matches_brute_force_deepmind_surfels(spacing, tol):
    """Two overlapping boxes (only face, edge and corner surfels, whose areas have closed forms) against an
    independent brute-force NSD of DeepMind's definition; one box touches the volume border."""
    shape = (8, 8, 7)
    box_label = ((1, 5), (2, 6), (1, 4))
    box_pred = ((2, 7), (0, 5), (2, 7))  # touches Y = 0 and Z = 6, the volume border
    label = _vol(shape, (1, *box_label))
    pred = _vol(shape, (1, *box_pred))
    expected, distances = _brute_nsd(box_label, box_pred, spacing, tol)
    assert np.min(np.abs(distances - tol)) > 1e-3  # no surfel sits on the tolerance: float32 cannot flip it
    assert 0.1 < expected < 0.95  # a nontrivial case
    res = volume_metrics(pred, label, 2, spacing=spacing, tolerance_mm=tol)
    assert res["nsd"] == pytest.approx([expected], rel=1e-5)


# ------------------------------------------------------------------------------------ empty rules
def test_empty_rules_give_the_stated_values():
    shape, spacing = (4, 5, 6), (0.5, 2.0, 1.5)
    diagonal = math.sqrt((4 * 0.5) ** 2 + (5 * 2.0) ** 2 + (6 * 1.5) ** 2)
    # class 1 in both, class 2 only in the label, class 3 only in the prediction, class 4 in neither
    label = _vol(shape, (1, (0, 2), (0, 2), (0, 2)), (2, (2, 4), (3, 5), (4, 6)))
    pred = _vol(shape, (1, (0, 2), (0, 2), (0, 2)), (3, (2, 3), (0, 1), (5, 6)))
    res = volume_metrics(pred, label, 5, spacing=spacing)
    assert _finite(res)
    assert res["dice"] == [1.0, 0.0, 0.0, 1.0]
    assert res["nsd"] == [1.0, 0.0, 0.0, 1.0]
    assert res["hd95"] == [0.0, diagonal, diagonal, 0.0]
    assert res["mean_hd95"] == pytest.approx(diagonal / 2, rel=1e-12)
    # an all-background volume scores perfectly on every class
    zeros = np.zeros(shape, dtype=np.int64)
    assert volume_metrics(zeros, zeros, 3) == {
        "dice": [1.0, 1.0],
        "hd95": [0.0, 0.0],
        "nsd": [1.0, 1.0],
        "mean_dice": 1.0,
        "mean_hd95": 0.0,
        "mean_nsd": 1.0,
    }
    assert isinstance(EMPTY_RULE, str) and "\n" not in EMPTY_RULE and "diagonal" in EMPTY_RULE


# ---------------------------------------------------------------------------------------- summary
def test_summarise_cases_means_element_wise():
    a = {
        "dice": [1.0, 0.0],
        "hd95": [0.0, 4.0],
        "nsd": [1.0, 0.5],
        "mean_dice": 0.5,
        "mean_hd95": 2.0,
        "mean_nsd": 0.75,
    }
    b = {
        "dice": [0.5, 0.5],
        "hd95": [2.0, 2.0],
        "nsd": [0.0, 0.5],
        "mean_dice": 0.5,
        "mean_hd95": 2.0,
        "mean_nsd": 0.25,
    }
    assert summarise_cases([a, b]) == {
        "dice": [0.75, 0.25],
        "hd95": [1.0, 3.0],
        "nsd": [0.5, 0.5],
        "mean_dice": 0.5,
        "mean_hd95": 2.0,
        "mean_nsd": 0.5,
        "cases": 2,
    }
    with pytest.raises(ValueError, match="at least one"):
        summarise_cases([])
    with pytest.raises(ValueError, match="numbers of classes"):
        summarise_cases([a, {**b, "dice": [0.5]}])


# ----------------------------------------------------------------------------------------- errors
def test_errors_are_clear():
    vol = np.zeros((4, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        volume_metrics(vol, np.zeros((4, 4, 5), dtype=np.int64), 2)
    bad = vol.copy()
    bad[0, 0, 0], bad[1, 1, 1] = 3, -1
    with pytest.raises(ValueError, match=r"pred .*0\.\.2.*-1, 3"):
        volume_metrics(bad, vol, 3)
    with pytest.raises(ValueError, match=r"label .*1\.5"):
        volume_metrics(vol, vol + 1.5, 3)
    for spacing in [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, float("nan"), 1.0), "abc", 1.0]:
        with pytest.raises(ValueError, match="spacing must be 3 positive numbers"):
            volume_metrics(vol, vol, 2, spacing=spacing)
    with pytest.raises(ValueError, match="3-D"):
        volume_metrics(vol[0], vol[0], 2)
    with pytest.raises(ValueError, match="num_classes"):
        volume_metrics(vol, vol, 1)
    with pytest.raises(ValueError, match="tolerance_mm"):
        volume_metrics(vol, vol, 2, tolerance_mm=-1.0)


def _blob(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    from scipy import ndimage

    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5)
    return x > np.quantile(x, 0.7)


def _hd95_reference(p: np.ndarray, g: np.ndarray, spacing) -> tuple[float, float]:
    """Surfaces as the voxels an erosion removes, distances by SciPy's exact EDT, the 95th (and, to show the
    test tells them apart, the 96th) percentile of the two directed distance sets, the larger of the two."""
    from scipy import ndimage

    ep, eg = p ^ ndimage.binary_erosion(p), g ^ ndimage.binary_erosion(g)
    to_g = ndimage.distance_transform_edt(~eg, sampling=spacing)[ep]
    to_p = ndimage.distance_transform_edt(~ep, sampling=spacing)[eg]
    return tuple(max(np.percentile(to_g, q), np.percentile(to_p, q)) for q in (95, 96))


def test_hd95_is_the_95th_percentile_of_scipys_surface_distances_per_class():
    spacing = (1.0, 1.5, 2.0)
    a, b, c, d = (_blob((14, 12, 10), s) for s in (0, 10, 2, 12))
    pred, label = a.astype(int) + 2 * (c & ~a), b.astype(int) + 2 * (d & ~b)  # two foreground classes
    result = volume_metrics(pred, label, 3, spacing=spacing)
    for k, cls in enumerate((1, 2)):
        hd95, hd96 = _hd95_reference(pred == cls, label == cls, spacing)
        assert hd95 != pytest.approx(hd96)
        assert result["hd95"][k] == pytest.approx(hd95, rel=1e-5)
