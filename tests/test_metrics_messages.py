"""What the metrics say when they refuse an input: the argument by its name, the shape or values at fault and
what to pass instead (users read these messages; mutation testing found that no test did)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from gpfuse.metrics.reid_inputs import all_ids, as_features, as_tensor, check_choice, check_positive_int, feature_pair
from gpfuse.metrics.seg2d import PolypEvaluator, polyp_scores
from gpfuse.metrics.seg3d import summarise_cases, volume_metrics
from gpfuse.metrics.sentiment import mosi_regression_metrics


def _raises(call, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_polyp_evaluator_names_the_image_argument_at_fault():
    ev, mask = PolypEvaluator(), np.zeros((4, 4), dtype=bool)
    _raises(lambda: ev.update(np.zeros((4, 4), dtype=np.int32), mask), "pred of dtype int32 is ambiguous")
    _raises(
        lambda: ev.update(np.full((4, 4), 1.5), mask),
        "pred values must lie in [0, 1] for a float map, got "
        "values in [1.5, 1.5] (pass a uint8 array for a 0..255 map)",
    )
    _raises(lambda: ev.update(np.full((4, 4), np.nan), mask), "pred contains 16 NaN values")
    _raises(lambda: ev.update(np.zeros((4, 4)), np.full((4, 4), np.nan)), "gt contains 16 NaN values")
    _raises(lambda: ev.update(np.zeros((4, 4)), np.zeros((4, 5))), "pred shape (4, 4) and gt shape (4, 5) must match")
    _raises(lambda: ev.update(np.zeros((0, 3)), np.zeros((0, 3))), "pred is empty (shape (0, 3))")
    _raises(lambda: ev.update(["a"], mask), "pred must be a numeric array, got dtype <U1")
    _raises(lambda: ev.update(np.zeros((4, 4)), [["a"]]), "gt must be a numeric array, got dtype <U1")
    _raises(
        lambda: ev.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))), "use update_batch for (B, H, W) or (B, 1, H, W)"
    )
    eight = np.arange(8, dtype=float).reshape(2, 4)
    _raises(
        lambda: ev.update(np.zeros((2, 4)), eight),
        "gt must be a binary mask (bool, {0, 1} or {0, 255}), got values {0, 1, 2, 3, 4, 5, 6, 7}",
    )
    nine = np.arange(9, dtype=float).reshape(3, 3)
    _raises(lambda: ev.update(np.zeros((3, 3)), nine), "got values {0, 1, 2, 3, 4, 5, 6, 7, ...}")
    _raises(lambda: ev.compute(), "no image was added: call update() or update_batch() before compute()")


def test_polyp_evaluator_batches_name_preds_and_gts():
    ev = PolypEvaluator()
    _raises(
        lambda: ev.update_batch(np.zeros((2, 3, 4, 4)), np.zeros((2, 4, 4))),
        "preds must have shape (B, H, W) or (B, 1, H, W), got (2, 3, 4, 4)",
    )
    _raises(lambda: ev.update_batch(np.zeros((2, 4, 4)), np.zeros((4, 4))), "gts must have shape (B, H, W)")
    _raises(
        lambda: ev.update_batch(np.zeros((2, 1, 4, 4)), np.zeros((2, 4, 5))),
        "preds shape (2, 1, 4, 4) and gts shape (2, 4, 5) must match",
    )
    _raises(lambda: ev.update_batch(np.full((1, 4, 4), 2.0), np.zeros((1, 4, 4))), "preds values must lie in [0, 1]")
    _raises(lambda: ev.update_batch(np.zeros((1, 2, 2)), np.full((1, 2, 2), 3.0)), "gts must be a binary mask")
    _raises(lambda: ev.update_batch(["x"], np.zeros((1, 2, 2))), "preds must be a numeric array")
    _raises(lambda: ev.update_batch(np.zeros((1, 2, 2)), ["x"]), "gts must be a numeric array")


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_polyp_threshold_bounds_are_accepted(threshold):
    assert PolypEvaluator(threshold).threshold == threshold


@pytest.mark.parametrize("threshold", [-0.01, 1.01])
def test_polyp_threshold_outside_the_unit_interval_is_refused(threshold):
    _raises(lambda: PolypEvaluator(threshold), f"threshold must lie in [0, 1], got {threshold}")


def test_polyp_scores_refuse_records_of_another_shape():
    _raises(lambda: polyp_scores(np.zeros((0, 3))), "records must have shape (N >= 1, ")
    _raises(lambda: polyp_scores(np.zeros(5)), "got (5,)")


def test_a_batch_of_one_row_images_is_a_batch_not_a_channel_axis():
    """(B, 1, W) is B images of one row: only a 4-D batch has a channel axis to drop."""
    rng = np.random.default_rng(0)
    preds, gts = rng.random((3, 1, 6)), rng.random((3, 1, 6)) > 0.5
    batch, single = PolypEvaluator(), PolypEvaluator()
    batch.update_batch(preds, gts)
    for p, g in zip(preds, gts, strict=True):
        single.update(p, g)
    assert batch.num_images == 3 and np.array_equal(batch.records, single.records)


def test_uint8_and_bool_predictions_are_read_as_their_levels():
    rng = np.random.default_rng(1)
    gt = rng.random((2, 8, 8)) > 0.5
    levels = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    as_uint8, as_float = PolypEvaluator(), PolypEvaluator()
    as_uint8.update_batch(levels, gt)
    as_float.update_batch(levels / 255.0, gt)
    assert np.array_equal(as_uint8.records, as_float.records)
    hard = levels > 127
    as_bool, as_unit = PolypEvaluator(), PolypEvaluator()
    as_bool.update_batch(hard, gt)
    as_unit.update_batch(hard.astype(np.float64), gt)
    assert np.array_equal(as_bool.records, as_unit.records)


def test_volume_metrics_name_pred_label_and_the_values_at_fault():
    a = np.zeros((3, 3, 3), dtype=int)
    _raises(
        lambda: volume_metrics(np.zeros((0, 3, 3)), np.zeros((0, 3, 3)), 2),
        "pred and label are empty (shape (0, 3, 3))",
    )
    _raises(lambda: volume_metrics(["x"], a, 2), "pred must be a numeric array")
    _raises(lambda: volume_metrics(a, ["x"], 2), "label must be a numeric array")
    many = np.arange(27).reshape(3, 3, 3)
    _raises(
        lambda: volume_metrics(a, many, 2), "label must hold integer labels in 0..1, got {2, 3, 4, 5, 6, 7, 8, 9, ...}"
    )
    eight = np.arange(2, 10).reshape(2, 2, 2)  # 8 values outside 0..1: all shown, no "..."
    _raises(
        lambda: volume_metrics(eight, np.zeros((2, 2, 2), dtype=int), 2),
        "pred must hold integer labels in 0..1, got {2, 3, 4, 5, 6, 7, 8, 9}",
    )
    _raises(
        lambda: volume_metrics(a, a, 2, spacing=(1, 1)),
        "spacing must be 3 positive numbers (mm along X, Y, Z), got (1, 1)",
    )
    _raises(lambda: volume_metrics(a, a, 2, spacing="abc"), "spacing must be 3 positive numbers")
    _raises(lambda: volume_metrics(a, a, 1.5), "num_classes")
    _raises(lambda: summarise_cases([]), "summarise_cases needs at least one result")
    _raises(lambda: summarise_cases([{"dice": [1.0]}]), "result 0 lacks ")


def test_sentiment_metrics_name_the_argument_at_fault():
    _raises(lambda: mosi_regression_metrics([], []), "preds and labels are empty: metrics need at least one value")
    _raises(lambda: mosi_regression_metrics(["a"], [1.0]), "preds must be numeric, got list")
    _raises(lambda: mosi_regression_metrics([1.0], [np.nan]), "labels contains 1 non-finite values (NaN/inf)")
    _raises(lambda: mosi_regression_metrics(torch.tensor([1.0, np.inf]), [1.0, 2.0]), "preds contains 1 non-finite")


def test_reid_inputs_name_the_argument_and_keep_device_and_dtype():
    _raises(lambda: as_tensor(object(), "q_feats"), "q_feats must be a numeric array, got object")
    _raises(lambda: as_features(np.zeros(3), "g_feats"), "g_feats must be 2-D (num_samples, dim), got shape (3,)")
    _raises(lambda: feature_pair(np.zeros(3), np.zeros((2, 3)), None), "q_feats must be 2-D")
    _raises(lambda: feature_pair(np.zeros((2, 3)), np.zeros(3), None), "g_feats must be 2-D")
    _raises(lambda: feature_pair(np.zeros((2, 3)), np.zeros((2, 4)), None), "same feature dim, got 3 and 4")
    q, g, device = feature_pair(np.ones((2, 3), dtype=np.int64), torch.ones(4, 3, dtype=torch.float64), None)
    assert device == "cpu" and q.dtype == g.dtype == torch.float64
    q, g, device = feature_pair(torch.ones(2, 3, dtype=torch.float16), np.ones((1, 3), dtype=np.float32), None)
    assert device == torch.device("cpu") and q.dtype == g.dtype == torch.float32
    ids = [np.arange(2), np.arange(3), np.arange(2), np.arange(3)]
    for k, name in enumerate(("q_pids", "g_pids", "q_camids", "g_camids")):
        wrong = list(ids)
        wrong[k] = np.arange(5)
        _raises(lambda w=wrong: all_ids(*w, 2, 3, "q_feats", "g_feats", "cpu"), f"{name} has 5 values but ")
    half = [np.array([0.5, 1.0]), *ids[1:]]
    _raises(lambda: all_ids(*half, 2, 3, "q_feats", "g_feats", "cpu"), "q_pids must hold integer ids, got non-integral")
    complex_ids = [np.array([1j, 2j]), *ids[1:]]
    _raises(
        lambda: all_ids(*complex_ids, 2, 3, "q", "g", "cpu"), "q_pids must hold integer ids, got dtype torch.complex128"
    )
    out = all_ids(np.array([1.0, 2.0]), *ids[1:], 2, 3, "q", "g", "cpu")
    assert [t.dtype for t in out] == [torch.int64] * 4 and out[0].tolist() == [1, 2]
    _raises(
        lambda: check_choice("x", "metric", ("euclidean", "cosine")),
        "metric must be one of: ['euclidean', 'cosine'], got 'x'",
    )
    for bad in (0, True, 1.0, "2"):
        _raises(lambda b=bad: check_positive_int(b, "max_rank"), f"max_rank must be a positive integer, got {bad!r}")
    assert check_positive_int(np.int64(3), "max_rank") == 3
