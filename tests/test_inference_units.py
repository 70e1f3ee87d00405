"""The predictors of ``gpfuse.inference`` on small fake models with outputs known by hand: batching, resizing,
thresholds, standardisation, ranking protocols, ONNX feeding, saved-run reading and refusals. Fast (no training):
they are the tests ``make mutation`` runs on ``inference/``; the slow run tests compare the same predictors with
``gpfuse eval`` on trained runs."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import colo_pair_data, mosi_data, polyp_folder_data, tiny_gpf_net, tiny_grf
from gpfuse.config import ConfigError, dump_config, validate_config
from gpfuse.encoders.image import IMAGE_ENCODERS
from gpfuse.inference import ReIDPredictor, SavedRun, SegmentationPredictor, SentimentPredictor, VolumePredictor, load
from gpfuse.inference.inputs import as_rgb
from gpfuse.inference.segmentation import full_size_probabilities
from gpfuse.inference.sentiment import _masked, _sequences
from gpfuse.inference.volumes import affine_of, sliding_window_logits, voxel_spacing
from gpfuse.models import create_model


class FakeModel(nn.Module):
    """``forward(batch)`` -> ``SimpleNamespace(**outputs(batch))``; records every batch it is given."""

    def __init__(self, outputs, name: str = "ea_dk", options: dict | None = None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # SavedRun.device reads a parameter
        self.outputs, self.batches = outputs, []
        self.gpfuse_config = {"name": name, "options": options or {}}

    def forward(self, batch):
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return SimpleNamespace(**self.outputs(batch))


def _run(raw: dict, model: nn.Module, stats: dict | None = None) -> SavedRun:
    return SavedRun(Path("fake"), validate_config(raw, "test"), stats or {}, model)


# --- inputs ------------------------------------------------------------------------------------------------


def test_image_inputs_become_rgb_and_bad_arrays_are_named():
    gray = Image.fromarray(np.full((3, 4), 7, np.uint8))
    assert as_rgb(gray).mode == "RGB" and np.asarray(as_rgb(gray))[0, 0].tolist() == [7, 7, 7]
    array = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(np.asarray(as_rgb(array)), array)
    for bad in (np.zeros((2, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 3), np.float32)):
        with pytest.raises(ValueError, match=rf"frame 3: .*got shape \({bad.shape[0]}, {bad.shape[1]}"):
            as_rgb(bad, "frame 3")
    with pytest.raises(TypeError, match="image: expected a path.*got list"):
        as_rgb([1, 2])


# --- 2D segmentation ----------------------------------------------------------------------------------------


def test_full_size_probabilities_upsample_each_map_bilinearly_to_its_own_size():
    logits = torch.tensor([[[[0.0, 4.0]]], [[[2.0, 2.0]]]])  # (2, 1, 1, 2)
    first, second = full_size_probabilities(logits, [(1, 4), (3, 2)])
    # align_corners=False, 2 -> 4 columns: 0, 1, 3, 4
    assert torch.allclose(first, torch.sigmoid(torch.tensor([[0.0, 1.0, 3.0, 4.0]])))
    assert second.shape == (3, 2) and torch.allclose(second, torch.full((3, 2), torch.sigmoid(torch.tensor(2.0))))


def _seg_config(**train) -> dict:
    data = {**polyp_folder_data("nowhere"), "eval_batch_size": 2}
    return {"name": "seg", "data": data, "model": {"name": "ea_dk", "encoder_weights": None}, "train": train}


def test_segmentation_feeds_normalised_batches_and_returns_maps_at_each_images_size():
    model = FakeModel(lambda b: {"logits": b["image"][:, :1]})  # logit = normalised red channel
    predictor = SegmentationPredictor(_run(_seg_config(threshold=0.6), model))
    colours = [(200, 0, 0), (20, 0, 0), (120, 9, 9)]
    images = [Image.new("RGB", (40 + 8 * i, 24), c) for i, c in enumerate(colours)]
    results = predictor.predict(images)
    encoder = IMAGE_ENCODERS["efficientnet_lite0"][0]
    assert [tuple(b["image"].shape) for b in model.batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    for image, colour, result in zip(images, colours, results, strict=True):
        red = (colour[0] / 255 - encoder.input_mean[0]) / encoder.input_std[0]
        expected = 1 / (1 + np.exp(-red))
        assert result.probability.shape == (24, image.width) and result.probability.dtype == np.float32
        assert np.allclose(result.probability, expected, atol=1e-5)
        assert result.mask.all() == (expected >= 0.6) and result.mask.any() == (expected >= 0.6)
    assert [r.mask.all() for r in results] == [True, False, False]  # sigmoid: 0.89, 0.20, 0.54


def test_a_probability_at_the_threshold_is_foreground_and_one_image_gives_one_result():
    predictor = SegmentationPredictor(
        _run(_seg_config(threshold=0.5), FakeModel(lambda b: {"logits": 0 * b["image"][:, :1]}))
    )
    result = predictor.predict(np.zeros((5, 7, 3), np.uint8))
    assert result.probability.shape == (5, 7) and result.mask.all()
    assert SegmentationPredictor(predictor.run, batch_size=3).batch_size == 3 and predictor.batch_size == 2


def test_mixed_precision_runs_under_autocast_and_full_precision_does_not():
    seen = []

    def outputs(batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"logits": batch["image"][:, :1]}

    for precision in ("bf16-mixed", "32-true"):
        run = _run(_seg_config(precision=precision), FakeModel(outputs))
        SegmentationPredictor(run).predict([np.zeros((4, 4, 3), np.uint8)])
    assert seen == [True, False]


# --- re-identification --------------------------------------------------------------------------------------


def _reid_outputs(batch):
    """embedding: the image's mean per channel, then the number of report tokens (0 without a report)."""
    tokens = (
        batch["text_mask"].sum(1, keepdim=True).float() if "text_mask" in batch else torch.zeros(len(batch["image"]), 1)
    )
    return {"embedding": torch.cat([batch["image"].mean((2, 3)), tokens], 1)}


def _reid(text_model: str | None = "minilm", max_text_len: int = 64, **data) -> ReIDPredictor:
    raw = {
        "name": "reid",
        "data": {**colo_pair_data("nowhere"), "eval_batch_size": 2, **data},
        "model": tiny_gpf_net(text_model=text_model, max_text_len=max_text_len),
    }
    return ReIDPredictor(_run(raw, FakeModel(_reid_outputs, "gpf_net")))


def _images(n: int) -> list[np.ndarray]:
    return [np.full((6, 5, 3), 30 * i, np.uint8) for i in range(n)]


def test_embeddings_are_l2_normalised_unless_raw_and_a_missing_report_is_image_only():
    reid = _reid()
    raw = reid.embed(_images(3), ["a polyp", "", "a large polyp here"], normalize=False)
    assert raw.shape == (3, 4) and raw[1, 3] == 0 and 0 < raw[0, 3] < raw[2, 3]
    unit = reid.embed(_images(3), ["a polyp", "", "a large polyp here"])
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert [len(b["image"]) for b in reid.run.model.batches] == [2, 1, 2, 1]


def test_images_are_resized_and_normalised_as_the_run_did():
    reid = _reid()
    reid.embed([np.full((30, 20, 3), (200, 100, 50), np.uint8)])
    pixels = reid.run.model.batches[0]["image"]
    encoder = IMAGE_ENCODERS["efficientnet_lite0"][0]
    expected = [
        (c / 255 - m) / s for c, m, s in zip((200, 100, 50), encoder.input_mean, encoder.input_std, strict=True)
    ]
    assert pixels.shape == (1, 3, 48, 48) and torch.allclose(pixels[0, :, 24, 24], torch.tensor(expected), atol=1e-5)
    with pytest.raises(ValueError, match=r"image 1: an array image must be \(H, W, 3\) uint8"):
        reid.embed([_images(1)[0], np.zeros((4, 4), np.uint8)])


def test_report_refusals_name_the_counts():
    with pytest.raises(ValueError, match=r"this model is image-only \(model.text_model is None\): give no reports"):
        _reid(text_model=None).embed(_images(1), ["a report"])
    with pytest.raises(ValueError, match="1 reports for 2 images"):
        _reid().embed(_images(2), ["a report"])


def test_own_protocol_ranks_by_the_runs_metric_and_keeps_top_k():
    reid = _reid(text_model=None, metric="cosine")
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    g = np.array([[1.0, 1.0], [0.0, 2.0], [3.0, 0.1]], np.float32)
    order, dist = reid.rank(q, g, top_k=2)
    cosine = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    assert order.tolist() == np.argsort(cosine, axis=1)[:, :2].tolist() == [[2, 0], [1, 0]]
    assert np.allclose(dist, np.take_along_axis(cosine, order, 1), atol=1e-6)
    order, dist = _reid(text_model=None).rank(q, g, top_k=5)  # euclidean (squared), all 3 kept
    squared = ((q[:, None] - g[None]) ** 2).sum(-1)
    assert order.shape == (2, 3) and np.allclose(dist, np.take_along_axis(squared, order, 1), atol=1e-5)


def test_query_protocol_embeds_the_gallery_once_per_distinct_report():
    reid = _reid(select_protocol="query")
    gallery, reports = _images(3), ["short", "a much longer report", "short"]
    order, dist = reid.rank(_images(3), gallery, top_k=3, query_reports=reports)
    assert len(reid.run.model.batches) == 2 + 2 * 2  # queries, then the gallery once per distinct report
    q = reid.embed(_images(3), reports, normalize=False)
    for i, report in enumerate(reports):
        g = reid.embed(gallery, [report] * 3, normalize=False)
        full = ((q[i][None] - g) ** 2).sum(-1)
        assert (
            np.allclose(dist[i], np.sort(full), atol=1e-4)
            and order[i].tolist() == np.argsort(full, kind="stable").tolist()
        )
    own_order, _ = reid.rank(_images(3), gallery, 3, reports, reports, protocol="own")
    assert own_order.shape == (3, 3)


def test_query_protocol_reads_a_missing_query_report_as_none_and_ranks_by_the_runs_metric():
    reid = _reid(metric="cosine")
    gallery = _images(3)
    order, dist = reid.rank(_images(2), gallery, query_reports=[None, "a report"], protocol="query")
    again_order, again = reid.rank(_images(2), gallery, query_reports=["", "a report"], protocol="query")
    assert dist.dtype == np.float32 and np.array_equal(dist, again) and np.array_equal(order, again_order)
    q = reid.embed(_images(2), ["", "a report"], normalize=False)
    g = reid.embed(gallery, ["a report"] * 3, normalize=False)
    cosine = 1 - (q[1] / np.linalg.norm(q[1])) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    assert np.allclose(dist[1], np.sort(cosine), atol=1e-5)


def test_ten_nearest_by_default():
    order, dist = _reid(text_model=None).rank(np.zeros((1, 2), np.float32), np.random.rand(12, 2).astype(np.float32))
    assert order.shape == dist.shape == (1, 10)


def test_query_protocol_refusals():
    with pytest.raises(ValueError, match="protocol must be 'own' or 'query', got 'all'"):
        _reid().rank(_images(1), _images(1), protocol="all")
    with pytest.raises(
        ValueError, match="the query protocol embeds the gallery under each query's report: give its images"
    ):
        _reid().rank(_images(1), np.zeros((1, 4), np.float32), query_reports=["a"], protocol="query")
    with pytest.raises(
        ValueError,
        match=r"the query protocol embeds the gallery with each query's report: a model that reads reports and "
        r"query_reports are needed \(protocol='own' ranks without them\)",
    ):
        _reid().rank(_images(1), _images(1), protocol="query")
    with pytest.raises(ValueError, match="query_reports are needed"):
        _reid(text_model=None).rank(_images(1), _images(1), query_reports=None, protocol="query")


# --- sentiment ----------------------------------------------------------------------------------------------


def test_sequences_pad_right_with_a_mask_and_refuse_wrong_sizes():
    x, mask = _sequences([np.ones((2, 3)), 2 * np.ones((1, 3))], "audio", 2, 3)
    assert x.shape == (2, 2, 3) and mask.tolist() == [[True, True], [True, False]]
    assert x[1].tolist() == [[2, 2, 2], [0, 0, 0]]
    x, mask = _sequences(np.arange(6.0).reshape(2, 3), "audio", 2, 3)  # (N, D): one step each
    assert x.shape == (2, 1, 3) and mask.all() and x[1, 0].tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="audio: 1 rows for 2 texts"):
        _sequences([np.ones((2, 3))], "audio", 2, 3)
    for bad in ([np.ones((2, 4)), np.ones((1, 3))], [np.ones((0, 3)), np.ones((1, 3))], [np.ones(3), np.ones((1, 3))]):
        with pytest.raises(ValueError, match=r"audio: every row must be \(L >= 1, 3\)"):
            _sequences(bad, "audio", 2, 3)


def test_masked_features_keep_their_padding_where_stored_and_zero_it():
    x = np.arange(12.0).reshape(1, 4, 3)
    mask = np.array([[False, False, True, True]])
    out, kept = _masked(x, mask, "vision", 1, 3)
    assert out[0, :2].tolist() == [[0, 0, 0], [0, 0, 0]] and out[0, 2:].tolist() == x[0, 2:].tolist()
    assert kept is not None and kept.tolist() == mask.tolist()
    with pytest.raises(ValueError, match=r"vision: row 1 has no real step"):
        _masked(np.ones((2, 4, 3)), np.array([[True] * 4, [False] * 4]), "vision", 2, 3)
    for bad_x, bad_mask in (
        (np.ones((1, 4, 3)), mask.astype(int)),
        (np.ones((1, 4, 2)), mask),
        (np.ones((2, 4, 3)), mask),
    ):
        with pytest.raises(ValueError, match=r"vision: with a mask, features must be \(N=1, L, 3\)"):
            _masked(bad_x, bad_mask, "vision", 1, 3)


def _sentiment_outputs(batch):
    """score: the sum of the real audio values, plus 100 x the number of real text steps."""
    audio = (batch["audio"] * batch["audio_mask"][..., None]).sum((1, 2))
    return {"score": audio + 100 * batch["text_mask"].sum(1)}


STATS = {"audio": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}}


def _sentiment(stats: dict | None = STATS, **data) -> SentimentPredictor:
    raw = {"name": "s", "data": {**mosi_data("nowhere", "cache", batch_size=2), **data}, "model": tiny_grf()}
    model = FakeModel(_sentiment_outputs, "grf", {"input_dims": {"text": 4, "audio": 2}})
    return SentimentPredictor(_run(raw, model, stats))


def test_audio_is_standardised_with_the_runs_statistics_in_batches():
    sentiment = _sentiment(max_len={"text": 16, "audio": 3})
    audio = [np.array([[3.0, 6.0]]), np.array([[1.0, 2.0], [5.0, 10.0]]), np.array([[-1.0, -2.0]])]
    text = [np.ones((1, 4)), np.ones((2, 4)), np.ones((3, 4))]
    scores = sentiment.predict(None, audio=audio, text_features=text)
    # (3 - 1) / 2 + (6 - 2) / 4 = 2; 0 + (2 + 2) = 4; -1 - 1 = -2; padding stays out
    assert scores.dtype == np.float32 and scores.tolist() == [102.0, 204.0, 298.0]
    assert [len(b["audio"]) for b in sentiment.run.model.batches] == [2, 1]


def test_sentiment_refusals_name_the_modality_and_the_limit():
    sentiment = _sentiment(max_len={"text": 16, "audio": 1})
    text = [np.ones((1, 4))]
    with pytest.raises(ValueError, match=r"audio: sequences of 2 steps, the run read at most 1 \(data.max_len.audio\)"):
        sentiment.predict(None, audio=[np.ones((2, 2))], text_features=text)
    with pytest.raises(ValueError, match="needs 'audio' features"):
        sentiment.predict(None, text_features=text)
    with pytest.raises(ValueError, match=r"not \['vision'\]"):
        sentiment.predict(None, audio=[np.ones((1, 2))], vision=[np.ones((1, 2))], text_features=text)
    with pytest.raises(ValueError, match=r"masks for unknown modalities \['face'\]"):
        sentiment.predict(None, audio=[np.ones((1, 2))], text_features=text, masks={"face": np.ones((1, 1), bool)})
    for texts in (None, [], ["fine", "  "]):
        with pytest.raises(ValueError, match="every text must be a non-empty transcript"):
            sentiment.predict(texts, audio=[np.ones((1, 2))])
    with pytest.raises(FileNotFoundError, match=r"no training statistics for \['audio'\]"):
        _sentiment(stats={})
    assert _sentiment(stats={}, standardize=False).predict(None, audio=[np.ones((1, 2))], text_features=text) == [102.0]


def test_masked_text_features_keep_left_padding():
    sentiment = _sentiment()
    text, mask = np.ones((1, 3, 4)), np.array([[False, True, True]])
    sentiment.predict(None, audio=[np.array([[1.0, 2.0]])], text_features=text, masks={"text": mask})
    batch = sentiment.run.model.batches[0]
    assert batch["text_mask"].tolist() == mask.tolist() and batch["text"][0, 0].abs().sum() == 0


# --- volumes ------------------------------------------------------------------------------------------------


def test_spacing_comes_from_the_affines_column_norms_of_the_first_volume():
    from monai.data import MetaTensor

    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = rotation.double() @ torch.diag(torch.tensor([2.0, 3.0, 0.5], dtype=torch.float64))
    single = MetaTensor(torch.zeros(1, 2, 2, 2), affine=affine)
    assert voxel_spacing(single) == pytest.approx((2.0, 3.0, 0.5))
    batched = MetaTensor(torch.zeros(2, 1, 2, 2, 2), affine=torch.stack([affine, torch.eye(4, dtype=torch.float64)]))
    assert affine_of(batched).dtype == torch.float64 and torch.equal(affine_of(batched), affine)


def test_sliding_window_logits_cover_the_volume_with_the_models_output():
    model = FakeModel(lambda b: {"logits": torch.cat([b["image"], -b["image"]], 1)}, "bipvl_seg")
    image = torch.arange(2 * 8 * 6 * 4, dtype=torch.float32).reshape(2, 1, 8, 6, 4)
    logits = sliding_window_logits(model, image, (4, 4, 4), sw_batch_size=3, overlap=0.5)
    assert logits.shape == (2, 2, 8, 6, 4)
    assert torch.allclose(logits[:, :1], image, atol=1e-3) and torch.allclose(logits[:, 1:], -image, atol=1e-3)
    assert max(len(b["image"]) for b in model.batches) == 3 and tuple(model.batches[0]["image"].shape[2:]) == (4, 4, 4)


# --- ONNX files and saved runs ------------------------------------------------------------------------------


def _onnx_file(path: Path, config: dict, modalities: list[str] | None = None) -> Path:
    """score = audio + float(audio_ids): a float and an int64 input, ``gpfuse_model`` metadata."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["audio_ids"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["audio", "ids"], ["score"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("audio_ids", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"gpfuse_model": json.dumps(config)} | ({"modalities": json.dumps(modalities)} if modalities else {})
    helper.set_model_props(model, meta)
    save(model, str(path))
    return path


def test_an_onnx_file_is_fed_by_name_with_its_own_dtypes(tmp_path):
    pytest.importorskip("onnxruntime")
    from gpfuse.inference import OnnxModel

    model = OnnxModel(_onnx_file(tmp_path / "m.onnx", {"name": "grf", "options": {}}, ["audio"]), threads=1)
    batch = {
        "audio": torch.tensor([[0.5, 1.0]], dtype=torch.float64),
        "audio_ids": torch.tensor([[1, 2]], dtype=torch.int32),
    }
    out = model({**batch, "text": torch.zeros(1), "text_mask": torch.zeros(1)})  # of a modality it does not read
    assert out.score.dtype == torch.float32 and out.score.tolist() == [[1.5, 3.0]]
    assert model.device == torch.device("cpu") and model.gpfuse_config == {"name": "grf", "options": {}}
    with pytest.raises(AttributeError, match=r"m.onnx: the ONNX graph has no output 'logits'"):
        _ = out.logits
    assert model.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match=r"takes no \['audio_mask'\]"):  # a key of a modality it reads
        model({**batch, "audio_mask": torch.ones(1, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"needs \['audio_ids'\], not given"):
        model({"audio": batch["audio"]})
    with pytest.raises(ValueError, match="ONNX Runtime refused inputs of shapes"):
        model({"audio": torch.zeros(1, 3), "audio_ids": torch.zeros(1, 3, dtype=torch.int64)})
    two = OnnxModel(_onnx_file(tmp_path / "t.onnx", {"name": "grf", "options": {}}, ["audio", "text"]))
    with pytest.raises(ValueError, match=r"takes no \['text_ids'\]"):
        two({**batch, "text_ids": torch.zeros(1, 2, dtype=torch.int64)})
    strict = OnnxModel(_onnx_file(tmp_path / "s.onnx", {"name": "grf", "options": {}}))
    with pytest.raises(ValueError, match=r"takes no \['text_mask'\]"):
        strict({**batch, "text_mask": torch.zeros(1)})


def test_evaluation_batches_reach_the_file_without_their_labels(tmp_path):
    pytest.importorskip("onnxruntime")
    from gpfuse.inference import GraphInputsOnly, OnnxModel

    onnx = OnnxModel(_onnx_file(tmp_path / "m.onnx", {"name": "ea_dk", "options": {"channels": 8}}))
    deployed = GraphInputsOnly(onnx)
    batch = {"audio": torch.ones(2, 2), "audio_ids": torch.ones(2, 2, dtype=torch.int64), "mask": torch.zeros(2, 1)}
    assert deployed(batch).score.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert deployed.gpfuse_config == {"name": "ea_dk", "options": {"channels": 8}} and deployed.onnx is onnx
    with pytest.raises(ValueError, match=r"needs \['audio_ids'\], not given"):  # a missing input is still refused
        deployed({"audio": torch.ones(2, 2), "mask": torch.zeros(2, 1)})


def test_onnx_file_refusals(tmp_path):
    pytest.importorskip("onnxruntime")
    from gpfuse.inference import OnnxModel

    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxModel(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match=r"bad.onnx: not a readable ONNX file \([A-Z]\w+: ") as refused:
        OnnxModel(tmp_path / "bad.onnx")
    assert "NoneType" not in str(refused.value)
    from onnx import load, save

    bare = load(str(_onnx_file(tmp_path / "bare.onnx", {"name": "grf", "options": {}})))
    del bare.metadata_props[:]
    save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="bare.onnx: no gpfuse_model metadata: not a file written by `gpfuse export`"):
        OnnxModel(tmp_path / "bare.onnx")
    path = _onnx_file(tmp_path / "m.onnx", {"name": "grf", "options": {}})
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        OnnxModel(path, threads=0)


GRF_OPTIONS = {"input_dims": {"text": 4, "audio": 2}, "d_model": 8, "num_heads": 2, "num_layers": 1, "ffn_dim": 8}


@pytest.fixture
def saved_grf(tmp_path) -> Path:
    """A run folder of an untrained tiny GRF: model/ with its weights, run config and statistics beside."""
    run = tmp_path / "run"
    create_model("grf", **GRF_OPTIONS).save_pretrained(run / "model")
    raw = {"name": "s", "data": mosi_data("nowhere", "cache"), "model": {**tiny_grf(), "d_model": 8}}
    (run / "config.yaml").write_text(dump_config(validate_config(raw, "test")))
    (run / "data_stats.json").write_text(json.dumps(STATS))
    return run


def test_a_saved_run_is_read_from_its_folder_or_its_model_folder(saved_grf):
    predictor = load(saved_grf)
    assert isinstance(predictor, SentimentPredictor) and predictor.run.stats == STATS
    assert predictor.run.folder == saved_grf / "model" and not predictor.run.model.training
    assert SavedRun.read(saved_grf / "model").stats == STATS  # statistics of the run around the model folder
    assert predictor.run.model_option("d_model") == 8 and predictor.run.model_option("gate") == "gfu"  # saved, default


def test_saved_run_refusals_name_the_file(saved_grf, tmp_path):
    with pytest.raises(ValueError, match="engine 'tensorrt': choose one of torch, onnxruntime"):
        SavedRun.read(saved_grf, engine="tensorrt")
    with pytest.raises(ValueError, match=r"onnx_file '.*/x.onnx' is read by the onnxruntime engine only"):
        SavedRun.read(saved_grf, onnx_file=saved_grf / "x.onnx")
    with pytest.raises(FileNotFoundError, match=r"neither .* \(no config.json \+ model.safetensors\)"):
        SavedRun.read(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run/model.onnx: no ONNX file; run `gpfuse export .*` first"):
        SavedRun.read(saved_grf, engine="onnxruntime")
    with pytest.raises(FileNotFoundError, match="x.onnx: no such ONNX file"):
        SavedRun.read(saved_grf, engine="onnxruntime", onnx_file=saved_grf / "x.onnx")
    with pytest.raises(ValueError, match="device 'meta': the onnxruntime engine runs on the CPU"):
        SavedRun.read(saved_grf, device="meta", engine="onnxruntime")
    good = (saved_grf / "config.yaml").read_text()
    (saved_grf / "config.yaml").write_text(good.replace("data:", "data:\n  colour: red", 1))
    with pytest.raises(ConfigError, match=r"config.yaml: invalid configuration\n.*colour"):
        SavedRun.read(saved_grf)
    (saved_grf / "config.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match=r"config.yaml: not a readable run config \(\w*(Parser|Scanner)Error"):
        SavedRun.read(saved_grf)
    (saved_grf / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="no gpfuse_run.yaml .*preprocessing is unknown"):
        SavedRun.read(saved_grf)


def test_a_model_folder_of_another_model_than_the_run_config_is_refused(saved_grf):
    from gpfuse.models.io import CheckpointMismatchError

    create_model("unimodal", input_dims={"text": 4}, d_model=8, num_heads=2, num_layers=1, ffn_dim=8).save_pretrained(
        saved_grf / "model"
    )
    with pytest.raises(CheckpointMismatchError, match="holds a 'unimodal' model, expected 'grf'"):
        SavedRun.read(saved_grf)


def test_an_onnx_file_of_another_model_is_refused(saved_grf):
    pytest.importorskip("onnxruntime")
    saved = json.loads((saved_grf / "model" / "config.json").read_text())
    same = {"name": "grf", "options": saved["options"]}
    run = SavedRun.read(saved_grf, engine="onnxruntime", onnx_file=_onnx_file(saved_grf / "a.onnx", same))
    assert run.device == torch.device("cpu") and run.model_option("d_model") == 8
    assert isinstance(run.autocast(), contextlib.nullcontext)
    (saved_grf / "model" / "config.json").rename(saved_grf / "model" / "model.json")  # an earlier model folder
    assert SavedRun.read(saved_grf, engine="onnxruntime", onnx_file=saved_grf / "a.onnx").model_option("d_model") == 8
    other = {"name": "grf", "options": {**saved["options"], "d_model": 16}}
    with pytest.raises(ValueError, match="holds another model than the run's"):
        SavedRun.read(saved_grf, engine="onnxruntime", onnx_file=_onnx_file(saved_grf / "b.onnx", other))


# --- video --------------------------------------------------------------------------------------------------


class RedPredictor:
    """A frame predictor whose probability is the frame's red channel / 255; records its batch sizes."""

    threshold, batch_size = 0.5, 4

    def __init__(self) -> None:
        self.calls: list[int] = []

    def probabilities(self, images):
        self.calls.append(len(images))
        return [im[..., 0].astype(np.float32) / 255 for im in images]


def _video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_a_video_is_segmented_in_batches_with_a_row_per_frame(tmp_path):
    import csv

    import cv2

    from gpfuse.inference.video import CSV_HEADER, segment_video

    red = np.zeros((32, 48, 3), np.uint8)
    red[:, :24, 2] = 255  # BGR: the left half red
    frames = [red if i % 3 else np.zeros_like(red) for i in range(7)]  # frames 0, 3, 6 black
    predictor = RedPredictor()
    summary = segment_video(predictor, _video(tmp_path / "in.avi", frames), tmp_path / "out.avi", progress=False)
    assert predictor.calls == [4, 3] and (summary.frames, summary.width, summary.height) == (7, 48, 32)
    assert summary.frames_with_polyp == 4 and summary.video_fps == 10.0 and summary.csv == tmp_path / "out.csv"
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows[0] == CSV_HEADER and [r[0] for r in rows[1:]] == [str(i) for i in range(7)]
    assert rows[2][1] == "0.100" and [r[4] for r in rows[1:]] == ["0", "1", "1", "0", "1", "1", "0"]
    assert all(abs(int(r[2]) - 32 * 24) <= 32 for r in rows[1:] if r[4] == "1") and rows[1][2] == "0"
    capture = cv2.VideoCapture(str(tmp_path / "out.avi"))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert count == 7
    segment_video(
        predictor,
        tmp_path / "in.avi",
        tmp_path / "two.avi",
        batch_size=5,
        csv_path=tmp_path / "frames.csv",
        progress=False,
    )
    assert predictor.calls[2:] == [5, 2]  # no temporary file left beside the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.csv", "in.avi", "out.avi", "out.csv", "two.avi"]


def test_the_overlay_fills_the_mask_translucently_and_draws_its_contour():
    from gpfuse.inference.video import FILL_BGR, overlay_mask

    frame = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = overlay_mask(frame, mask, alpha=0.5)
    inside = ((100 + np.array(FILL_BGR)) / 2).astype(np.uint8)
    assert out[20, 20].tolist() == inside.tolist() and out[10, 10].tolist() == list(FILL_BGR)
    assert out[5, 5].tolist() == [100, 100, 100] and frame[20, 20].tolist() == [100, 100, 100]
    empty = overlay_mask(frame, np.zeros((40, 40), bool))
    assert empty is not frame and np.array_equal(empty, frame)


def test_video_requests_are_checked_before_any_work(tmp_path):
    from gpfuse.inference.video import check_video_request, is_video, segment_video

    video = _video(tmp_path / "in.avi", [np.zeros((8, 8, 3), np.uint8)])
    assert check_video_request("segmentation", video, tmp_path / "o.mp4") is True
    assert check_video_request("regression", tmp_path / "images", tmp_path / "preds") is False
    assert is_video(tmp_path / "A.MP4") and not is_video(tmp_path / "a.png")
    (tmp_path / "folder.mp4").mkdir()
    assert not is_video(tmp_path / "folder.mp4")
    with pytest.raises(ValueError, match="is a video file, but .* is not a video"):
        check_video_request("segmentation", tmp_path / "images", tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="video prediction is for 2D segmentation runs, this run is 'retrieval'"):
        check_video_request("retrieval", video, tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="must be a video file .*not '.webm'"):
        check_video_request("segmentation", video, tmp_path / "o.webm")
    with pytest.raises(ValueError, match="must be a video file .*not a folder"):
        check_video_request("segmentation", video, tmp_path / "preds")
    with pytest.raises(ValueError, match="is the input video itself"):
        check_video_request("segmentation", video, video)
    with pytest.raises(FileNotFoundError, match="none.avi: no such video file"):
        segment_video(RedPredictor(), tmp_path / "none.avi", tmp_path / "o.avi", progress=False)
    (tmp_path / "bad.avi").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.avi: not a readable video"):
        segment_video(RedPredictor(), tmp_path / "bad.avi", tmp_path / "o.avi", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.avi", "folder.mp4", "in.avi"]


def test_a_run_of_another_kind_is_named():
    raw = {"name": "reid", "data": colo_pair_data("nowhere"), "model": tiny_gpf_net()}
    with pytest.raises(TypeError, match=r"reid: a 'retrieval' run \(data.source 'colo_pair'\), not SegDataConfig"):
        SegmentationPredictor(_run(raw, FakeModel(_reid_outputs, "gpf_net")))


def test_image_paths_are_read_and_a_missing_one_is_named(tmp_path):
    Image.new("RGB", (6, 4), (9, 8, 7)).save(tmp_path / "a.png")
    assert np.asarray(as_rgb(tmp_path / "a.png"))[0, 0].tolist() == [9, 8, 7]
    assert as_rgb(str(tmp_path / "a.png")).size == (6, 4)
    with pytest.raises(FileNotFoundError, match="b.png"):
        as_rgb(tmp_path / "b.png")


# --- more re-identification ---------------------------------------------------------------------------------


def test_report_tokens_are_the_runs_tokenizer_at_its_length():
    from gpfuse.encoders.text import tokenize

    reid = _reid(max_text_len=16)
    reports = ["a polyp in the sigmoid colon", None, ""]
    reid.embed(_images(3), reports)
    ids = torch.cat([b["text_ids"] for b in reid.run.model.batches])
    mask = torch.cat([b["text_mask"] for b in reid.run.model.batches])
    expected_ids, expected_mask = tokenize(["a polyp in the sigmoid colon", "", ""], "minilm", reid.max_text_len)
    assert reid.max_text_len == 16 and ids.shape == (3, 16) and torch.equal(ids, torch.from_numpy(expected_ids))
    assert mask[0].tolist() == expected_mask[0].tolist() and not mask[1:].any()  # no report: image-only


def test_own_protocol_embeds_each_image_with_its_own_report():
    reid = _reid()
    query, gallery = _images(2), _images(3)
    q_reports, g_reports = ["one", "two words here"], ["", "a report", "a longer report than that"]
    order, dist = reid.rank(query, gallery, top_k=3, query_reports=q_reports, gallery_reports=g_reports)
    q = reid.embed(query, q_reports, normalize=False)
    g = reid.embed(gallery, g_reports, normalize=False)
    squared = ((q[:, None] - g[None]) ** 2).sum(-1)
    assert np.allclose(np.take_along_axis(squared, order, 1), dist, atol=1e-4)
    assert order.tolist() == np.argsort(squared, axis=1, kind="stable").tolist()


# --- more sentiment -----------------------------------------------------------------------------------------


def test_integer_and_nonfinite_features_reach_the_model_as_clean_float32(caplog):
    sentiment = _sentiment(max_len={"text": 16, "audio": 3})
    audio = [np.array([[3, 6]], np.int64), np.array([[np.nan, 2.0]])]
    text = [np.ones((1, 4), np.int64), np.ones((2, 4), np.int64)]
    with caplog.at_level("WARNING"):
        scores = sentiment.predict(None, audio=audio, text_features=text)
    assert "audio: replaced 1 non-finite values" in caplog.text
    batch = sentiment.run.model.batches[0]
    assert batch["audio"].dtype == batch["text"].dtype == torch.float32
    assert scores.tolist() == [102.0, 199.5]  # NaN -> 0, then standardised: (0 - 1) / 2 + (2 - 2) / 4
    masked = _sentiment().predict(
        None,
        audio=np.array([[[np.inf, 2.0]]]),
        text_features=np.ones((1, 1, 4), np.int64),
        masks={"audio": np.ones((1, 1), bool)},
    )
    assert masked.tolist() == [99.5] and "audio: replaced 1 non-finite values" in caplog.text


def test_pgf_net_reads_token_ids_of_its_backbone_at_the_runs_text_length():
    from gpfuse.encoders.text import tokenize

    raw = {
        "name": "pgf",
        "data": {**mosi_data("nowhere", "cache", batch_size=4), "max_len": {"audio": 1}},  # text length: default 50
        "model": {"name": "pgf_net", "backbone": "minilm"},
    }
    model = FakeModel(lambda b: {"score": b["text_mask"].sum(1).float()}, "pgf_net", {"input_dims": {"audio": 2}})
    sentiment = SentimentPredictor(_run(raw, model, STATS))
    long = " ".join(["polyp"] * 80)
    scores = sentiment.predict([long, "fine"], audio=np.zeros((2, 2)))
    ids, mask = tokenize([long, "fine"], "minilm", 50)
    batch = model.batches[0]
    assert sentiment.text_model == "minilm" and torch.equal(batch["text_ids"], torch.from_numpy(ids))
    assert scores.tolist() == mask.sum(1).tolist() == [50, 3]
    with pytest.raises(ValueError, match=r"not \['text_features \(this model tokenises transcripts\)'\]"):
        sentiment.predict(None, audio=np.zeros((1, 2)), text_features=[np.ones((1, 4))])


def test_grf_reads_the_frozen_text_encoders_states_of_the_transcripts():
    from gpfuse.encoders.text import cached_text_states

    sentiment = _sentiment(max_len={"text": 8, "audio": 1})
    sentiment.input_dims["text"] = 384
    sentiment.predict(["a fine film", "boring"], audio=np.zeros((2, 2)))
    states, mask = cached_text_states(["a fine film", "boring"], "minilm", 8)
    batch = sentiment.run.model.batches[0]
    assert torch.equal(batch["text"], torch.from_numpy(states)) and torch.equal(
        batch["text_mask"], torch.from_numpy(mask)
    )
    assert batch["text"].shape == (2, 8, 384)


# --- 3D segmentation ----------------------------------------------------------------------------------------


def _volume_predictor(**data) -> VolumePredictor:
    from conftest import tiny_bipvl

    raw = tiny_bipvl("nowhere", "runs")
    raw["data"].update({"roi_size": [8, 8, 8], "sw_batch_size": 2, **data})
    model = FakeModel(lambda b: {"logits": torch.cat([b["image"], -b["image"]], 1)}, "bipvl_seg", {"in_channels": 1})
    return VolumePredictor(_run(raw, model, {"labels": {"0": "background", "1": "dark"}}))


def _two_level_volume() -> np.ndarray:
    volume = np.full((16, 12, 8), 30.0, np.float32)
    volume[:8] = 10.0  # dark half: z-scored to -1, where the fake model's class 1 wins
    return volume


def test_volume_labels_come_back_on_the_inputs_grid(tmp_path):
    import nibabel as nib

    predictor = _volume_predictor()
    assert predictor.class_names == ["background", "dark"] and predictor.in_channels == 1
    volume = _two_level_volume()
    labels = predictor.predict(volume, spacing=(2.0, 1.0, 1.5))
    assert labels.dtype == np.uint8 and labels.shape == volume.shape
    assert np.array_equal(labels, (volume == 10).astype(np.uint8))
    assert max(len(b["image"]) for b in predictor.run.model.batches) == 2
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])), str(tmp_path / "v.nii.gz"))
    assert np.array_equal(predictor.predict(tmp_path / "v.nii.gz"), labels)
    assert np.array_equal(predictor.predict(volume[None]), labels)  # (C, X, Y, Z)


def test_a_volume_run_without_label_names_has_none():
    predictor = _volume_predictor()
    assert (
        VolumePredictor(SavedRun(predictor.run.folder, predictor.run.config, {}, predictor.run.model)).class_names == []
    )


def test_volume_refusals_name_the_input(tmp_path):
    predictor = _volume_predictor()
    with pytest.raises(ValueError, match=r"must be numeric \(X, Y, Z\) or \(C, X, Y, Z\), got shape \(4, 4\)"):
        predictor.predict(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 4\) bool"):
        predictor.predict(np.zeros((4, 4, 4), bool))
    for spacing in ((1.0, 1.0), (1.0, 0.0, 1.0)):
        with pytest.raises(
            ValueError, match=rf"spacing must be 3 positive numbers \(mm\), got {re.escape(str(spacing))}"
        ):
            predictor.predict(_two_level_volume(), spacing=spacing)
    with pytest.raises(ValueError, match="2 channel\\(s\\), the model takes 1"):
        predictor.predict(np.stack([_two_level_volume()] * 2))
    with pytest.raises(FileNotFoundError, match="volume not found: .*none.nii.gz"):
        predictor.predict(tmp_path / "none.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(ValueError, match="bad.nii.gz: not a readable volume"):
        predictor.predict(tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match="bad.nii.gz: a file carries its own spacing"):
        predictor.predict(tmp_path / "bad.nii.gz", spacing=(1, 1, 1))


# --- more video ---------------------------------------------------------------------------------------------


class CountingPredictor:
    """Frame i's probability map: 0.5 (the threshold) on its first i pixels of row 0, 0.25 elsewhere."""

    threshold, batch_size = 0.5, 2

    def __init__(self) -> None:
        self.frames = 0

    def probabilities(self, images):
        out = []
        for im in images:
            p = np.full(im.shape[:2], 0.25, np.float32)
            p[0, : self.frames] = 0.5
            self.frames += 1
            out.append(p)
        return out


def test_per_frame_rows_count_the_pixels_at_the_threshold_and_progress_is_reported(tmp_path, capsys, caplog):
    import csv

    from gpfuse.inference.video import segment_video

    video = _video(tmp_path / "in.avi", [np.zeros((16, 24, 3), np.uint8)] * 3, fps=5.0)
    (tmp_path / "out.avi").write_bytes(b"an earlier overlay")  # replaced
    start = time.perf_counter()
    with caplog.at_level("WARNING"):
        summary = segment_video(CountingPredictor(), video, tmp_path / "out.avi", batch_size=1)
    assert "decoded" not in caplog.text  # every frame the container announces
    elapsed = time.perf_counter() - start
    rows = list(csv.reader((tmp_path / "out.csv").open()))[1:]
    assert [r[2] for r in rows] == ["0", "1", "2"] and [r[4] for r in rows] == ["0", "1", "1"]
    assert [r[3] for r in rows] == ["0.2500", "0.5000", "0.5000"] and rows[1][1] == "0.200"
    assert summary.video == tmp_path / "out.avi" and summary.frames_with_polyp == 2 and summary.width == 24
    assert 0 < summary.seconds <= elapsed and summary.fps == pytest.approx(3 / summary.seconds)
    assert (tmp_path / "out.avi").stat().st_size > 100
    printed = " ".join(capsys.readouterr().out.split())
    assert "segmenting in.avi: frames 3/3 elapsed" in printed  # the progress lines where stdout is not a terminal
    assert "3 frames (24x16, 5 fps video), 2 with a polyp:" in printed and f"overlay {tmp_path / 'out.avi'}" in printed


def test_a_video_of_no_frames_is_refused(tmp_path):
    import cv2

    from gpfuse.inference.video import segment_video

    writer = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (16, 16))
    writer.release()
    with pytest.raises(ValueError, match="empty.avi: the video has 0 frames"):
        segment_video(RedPredictor(), tmp_path / "empty.avi", tmp_path / "o.avi", progress=False)
    assert not (tmp_path / "o.avi").exists() and not (tmp_path / "o.csv").exists()


def test_a_truncated_video_says_how_many_frames_were_lost(tmp_path, caplog):
    from gpfuse.inference.video import segment_video

    frames = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), np.uint8) for i in range(8)]
    data = _video(tmp_path / "in.avi", frames).read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        summary = segment_video(RedPredictor(), tmp_path / "cut.avi", tmp_path / "out.avi", progress=False)
    assert 0 < summary.frames < 8
    assert caplog.records[-1].getMessage().endswith(f"(truncated or corrupt?) and are not in {tmp_path / 'out.avi'}")
    assert f"decoded {summary.frames} of the 8 frames its container announces" in caplog.text


# --- more saved runs ----------------------------------------------------------------------------------------


def test_a_legacy_model_folder_and_the_model_folders_own_files_are_read(saved_grf, tmp_path):
    model = saved_grf / "model"
    (saved_grf / "data_stats.json").unlink()
    assert SavedRun.read(saved_grf).stats == {}
    moved = tmp_path / "copied"
    moved.mkdir()
    for f in model.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (moved / "gpfuse_run.yaml").write_text((saved_grf / "config.yaml").read_text())
    assert SavedRun.read(moved).config.model["d_model"] == 8  # a model folder that carries its run config
    (model / "config.json").rename(model / "model.json")
    (model / "data_stats.json").write_text(json.dumps({"audio": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}))
    run = SavedRun.read(model)
    assert run.stats["audio"]["mean"] == [0.0, 0.0]  # the model folder's own statistics come first
    assert run.model_config["options"]["d_model"] == 8


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_a_mixed_precision_run_predicts_under_its_autocast_and_says_when_bf16_is_emulated(
    saved_grf, precision, dtype, monkeypatch, caplog
):
    import yaml

    import gpfuse.utils.precision as precision_module

    config = yaml.safe_load((saved_grf / "config.yaml").read_text())
    config["train"]["precision"] = precision
    (saved_grf / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        run = SavedRun.read(saved_grf)
    with run.autocast():
        assert torch.get_autocast_dtype("cpu") == dtype and torch.is_autocast_enabled("cpu")
    assert ("emulated, about 40x slower" in caplog.text) == (precision == "bf16-mixed")
