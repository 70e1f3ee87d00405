"""ONNX export of a GPF-Net run that reads reports: ``image``, ``text_ids``, ``text_mask`` -> ``embedding`` (the
predictor's batch keys) verified on real frames with their real reports, and the image-only export of the same
model (``--image-only``), which leaves the text encoder out of the file; both rank a gallery as torch does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpfuse
from conftest import run_gpfuse, still_reid_run, two_layer_minilm
from gpfuse.export import export_onnx
from gpfuse.metrics.reid import compute_distance_matrix

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_reid")
    backbone = two_layer_minilm(folder / "minilm_2_layers")
    run, _ = still_reid_run(folder, "gpf_text", text_model=str(backbone), max_text_len=16)
    code, output = run_gpfuse("export", run, "--out", folder / "gpf_text.onnx")
    assert code == 0, output
    return folder, run, folder / "gpf_text.onnx"


def _frames(folder: Path) -> tuple[list[Path], list[Path], list[str]]:
    """One view-1 (query) and one view-2 (gallery) frame per video, and each video's report."""
    from gpfuse.data.colo_pair import patient_id, read_report_table

    videos = sorted((folder / "colo" / "resized_frame").iterdir())
    reports = read_report_table(folder / "colo" / "reports.csv")
    query = [sorted((v / "1").iterdir())[0] for v in videos]
    gallery = [sorted((v / "2").iterdir())[0] for v in videos]
    return query, gallery, [reports[patient_id(v.name)] for v in videos]


def _check_ranking(q_onnx: np.ndarray, g_onnx: np.ndarray, q_torch: np.ndarray, g_torch: np.ndarray) -> None:
    d_onnx, d_torch = (
        compute_distance_matrix(torch.from_numpy(q), torch.from_numpy(g)).numpy()
        for q, g in ((q_onnx, g_onnx), (q_torch, g_torch))
    )
    np.testing.assert_allclose(d_onnx, d_torch, atol=1e-4)
    assert np.diff(np.sort(d_torch, axis=1), axis=1)[:, :3].min() > 1e-4  # no near-ties: the top-3 means something
    assert (np.argsort(d_onnx, axis=1)[:, :3] == np.argsort(d_torch, axis=1)[:, :3]).all()


def _tokens(reid, reports: list[str]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reid._report_tokens(reports, len(reports)).items()}


def test_reports_export_with_their_tokens_and_rank_as_torch(text_run, tmp_path):
    folder, run, text_onnx = text_run
    proto = onnx.load(str(text_onnx))
    assert [i.name for i in proto.graph.input] == ["image", "text_ids", "text_mask"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input)  # dynamic batch
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["inputs"]) == ["image", "text_ids", "text_mask"]
    assert (
        meta["text_model"].endswith("minilm_2_layers") and meta["max_text_len"] == "16" and "report" in meta["outputs"]
    )

    reid = gpfuse.load(run)
    query, gallery, reports = _frames(folder)
    session = ort.InferenceSession(str(text_onnx), providers=["CPUExecutionProvider"])

    def onnx_embed(paths: list[Path], texts: list[str]) -> np.ndarray:
        x = torch.stack([reid.transform(Image.open(p)) for p in paths]).numpy()
        return session.run(None, {"image": x, **_tokens(reid, texts)})[0]

    q_onnx, g_onnx = onnx_embed(query, reports), onnx_embed(gallery, reports)
    q_torch = reid.embed([str(p) for p in query], reports, normalize=False)
    g_torch = reid.embed([str(p) for p in gallery], reports, normalize=False)
    assert np.abs(q_onnx - q_torch).max() <= 1e-4 and np.abs(g_onnx - g_torch).max() <= 1e-4
    _check_ranking(q_onnx, g_onnx, q_torch, g_torch)

    # a batch of one, and an image without a report (an all-False mask) in the same graph
    none = ["", *reports[1:2]]
    np.testing.assert_allclose(onnx_embed(query[:1], reports[:1]), q_torch[:1], atol=1e-4)
    np.testing.assert_allclose(
        onnx_embed(query[:2], none), reid.embed([str(p) for p in query[:2]], none, normalize=False), atol=1e-4
    )
    assert np.abs(q_torch[0] - reid.embed([str(query[0])], [""], normalize=False)[0]).max() > 1e-3  # text counts


def test_image_only_export_leaves_the_text_encoder_out(text_run, tmp_path):
    folder, run, text_onnx = text_run
    code, output = run_gpfuse("export", run, "--out", tmp_path / "gpf_image.onnx", "--image-only")
    assert code == 0, output
    proto = onnx.load(str(tmp_path / "gpf_image.onnx"))
    assert [i.name for i in proto.graph.input] == ["image"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["inputs"]) == ["image"] and "image-only" in meta["outputs"]
    assert not any("text" in i.name for i in proto.graph.initializer)
    reid = gpfuse.load(run)
    text_bytes = 4 * sum(p.numel() for p in reid.run.model.text_encoder.parameters())
    image_size, text_size = (tmp_path / "gpf_image.onnx").stat().st_size, text_onnx.stat().st_size
    assert image_size + 0.95 * text_bytes < text_size, (image_size, text_size, text_bytes)

    query, gallery, _ = _frames(folder)
    session = ort.InferenceSession(str(tmp_path / "gpf_image.onnx"), providers=["CPUExecutionProvider"])

    def onnx_embed(paths: list[Path]) -> np.ndarray:
        return session.run(None, {"image": torch.stack([reid.transform(Image.open(p)) for p in paths]).numpy()})[0]

    q_onnx, g_onnx = onnx_embed(query), onnx_embed(gallery)
    q_torch = reid.embed([str(p) for p in query], normalize=False)  # no reports: what the image-only graph does
    g_torch = reid.embed([str(p) for p in gallery], normalize=False)
    assert np.abs(q_onnx - q_torch).max() <= 1e-4 and np.abs(g_onnx - g_torch).max() <= 1e-4
    _check_ranking(q_onnx, g_onnx, q_torch, g_torch)


def test_frames_without_known_reports_are_refused_by_name(text_run, tmp_path):
    _, run, _ = text_run
    stray = tmp_path / "stray.png"
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(stray)
    with pytest.raises(ValueError, match=r"stray.png: not frames of the run's Colo-Pair"):
        export_onnx(run, tmp_path / "x.onnx", verify_with=[stray])
    assert not (tmp_path / "x.onnx").exists()
