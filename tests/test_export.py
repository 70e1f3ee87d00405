"""ONNX export of a saved 2D segmentation run: metadata, dynamic batch, ONNX Runtime agrees with torch on real
inputs, and a failed verification names the difference and leaves no file."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpfuse
from conftest import STILL_REID_TRAIN, colo_pair_data, polyp_folder_data, run_gpfuse, tiny_gpf_net
from gpfuse.config import validate_config
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.export import OnnxMismatchError, export_onnx, onnx_file
from gpfuse.tasks.runner import run_dir_for, train

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    with contextlib.chdir(tmp_path_factory.mktemp("export")):
        polyps = write_synthetic_polyp_folder(Path("data/polyps"), n_images=12, size=40)
        cfg = validate_config(
            {
                "name": "ea_dk",
                "output_dir": "runs",
                "data": polyp_folder_data(polyps),
                # ImageNet weights: a random-init encoder gives near-constant logits, and the masks compared below
                # would tie
                "model": {
                    "name": "ea_dk",
                    "encoder": "efficientnet_lite0",
                    "encoder_weights": "imagenet",
                    "channels": 8,
                },
                "train": {"max_epochs": 1, "seed": 42, "monitor": "valid/Dice", "monitor_mode": "max"},
            },
            "test",
        )
        train(cfg)
        yield run_dir_for(cfg).resolve(), polyps.resolve()


@pytest.fixture(scope="module")
def seg_onnx(seg_run, tmp_path_factory) -> tuple[Path, str]:
    """``gpfuse export`` of the run (tens of seconds: the tests share it): (the file, the command's output)."""
    path = tmp_path_factory.mktemp("export_file") / "ea_dk.onnx"
    code, output = run_gpfuse("export", seg_run[0], "--out", path)
    assert code == 0, output
    return path, output


def test_export_carries_the_preprocessing_and_agrees_with_torch(seg_run, seg_onnx):
    run, polyps = seg_run
    path, output = seg_onnx
    assert "torchvision" not in output  # the exporter's "torchvision is not installed" lines are dropped
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gpfuse_task"] == "segmentation" and json.loads(meta["input_size"]) == [32, 32]
    assert json.loads(meta["input_mean"]) == pytest.approx([127 / 255] * 3) and float(meta["threshold"]) == 0.5
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor = gpfuse.load(run)
    images = sorted((polyps / "images").iterdir())[:3]
    from gpfuse.inference.inputs import as_rgb

    x = torch.stack([predictor.transform(as_rgb(str(p), str(p)), np.zeros((1, 1), bool))[0] for p in images])
    with torch.no_grad():
        expected = predictor.run.model({"image": x}).logits.numpy()
    for batch in (x[:1], x):  # the batch axis is dynamic
        got = session.run(None, {"image": batch.numpy()})[0]
        assert np.abs(got - expected[: len(batch)]).max() < 1e-4
        # a one-epoch model's masks may be all or nothing at its threshold: cut at the median logit instead
        cut = np.median(expected[: len(batch)])
        masks_onnx, masks_torch = got > cut, expected[: len(batch)] > cut
        dice = 2 * (masks_onnx & masks_torch).sum() / max(1, masks_onnx.sum() + masks_torch.sum())
        assert 0 < masks_torch.sum() < masks_torch.size and dice >= 0.999


def test_a_failed_verification_names_the_difference_and_leaves_no_file(seg_run, seg_onnx, tmp_path, monkeypatch):
    run, polyps = seg_run
    # the graph the CLI exported, not traced again (tens of seconds): what is tested is the verification and clean-up
    monkeypatch.setattr(onnx_file, "_export", lambda spec, tmp, opset: shutil.copyfile(seg_onnx[0], tmp))
    with pytest.raises(OnnxMismatchError, match=r"differs from torch by .* on 2 real inputs, above the tolerance"):
        export_onnx(
            run, tmp_path / "strict.onnx", verify_with=sorted((polyps / "images").iterdir())[:2], tolerance=1e-12
        )
    assert list(tmp_path.iterdir()) == []


def test_gpf_net_exports_image_only_embeddings_that_rank_as_torch(tmp_path):
    from gpfuse.data.synthetic_reid import write_synthetic_colo_pair

    colo = write_synthetic_colo_pair(tmp_path / "colo", n_videos=6, frames_per_view=2, size=48)
    cfg = validate_config(
        {
            "name": "gpf",
            "output_dir": str(tmp_path / "runs"),
            "data": colo_pair_data(colo),
            "model": tiny_gpf_net(),
            # ImageNet weights and a near-zero rate: a random-init EfficientNet gives the same features for every
            # image, and one epoch at the usual rate collapses this tiny model's embeddings onto one point; either
            # would leave the comparison below comparing ties
            "train": STILL_REID_TRAIN,
        },
        "test",
    )
    train(cfg)
    run = run_dir_for(cfg)
    per_video = {p.parent.parent: p for p in sorted(colo.rglob("*.jpg"))}  # one frame per polyp: no near-ties
    frames = list(per_video.values())[:5]
    path = export_onnx(run, tmp_path / "gpf.onnx", verify_with=frames[:3])
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["gpfuse_task"] == "retrieval" and json.loads(meta["input_size"]) == [48, 48]
    reid = gpfuse.load(run)
    x = torch.stack([reid.transform(Image.open(p)) for p in frames])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    expected = reid.embed([str(p) for p in frames], normalize=False)
    assert np.abs(got - expected).max() < 1e-4
    d_onnx, d_torch = _distances(got), _distances(expected)
    np.testing.assert_allclose(d_onnx, d_torch, atol=1e-4)
    assert np.diff(np.sort(d_torch)).min() > 1e-4  # distinct distances: the ranking below means something
    assert (np.argsort(d_onnx) == np.argsort(d_torch)).all()


def _distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared distances of rows 1.. to row 0 (the first image as the query)."""
    return ((embeddings[:1] - embeddings[1:]) ** 2).sum(1)
