"""ONNX export of the 2D and sentiment runs and prediction with ONNX Runtime (``gpfuse predict --engine
onnxruntime``, ``gpfuse.load(..., engine=...)``). The export carries the preprocessing as metadata, has a dynamic
batch axis, and agrees with torch on real inputs; a failed verification names the difference and leaves no file.
The run's exported file behind the same predictors gives what the torch model gives, for each task kind; a missing
file, a file of another model and a batch that does not fit the graph are named. One EA-DK and one GPF-Net run,
each exported once, serve every test here (an export takes tens of seconds). The 3D kind is in
tests/test_export_volume.py, beside the one BiPVL-Seg export it shares; sentiment graphs in detail in
tests/test_export_sentiment.py."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gpfuse
from conftest import polyp_folder_data, run_gpfuse, still_reid_run
from gpfuse.config import validate_config
from gpfuse.data.synthetic_polyp import write_synthetic_polyp_folder
from gpfuse.export import OnnxMismatchError, export_onnx, onnx_file
from gpfuse.export.image_graphs import split_files
from gpfuse.inference import OnnxModel
from gpfuse.inference.inputs import as_rgb
from gpfuse.tasks.runner import run_dir_for, train

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _export(run: Path, *extra: str | Path) -> str:
    """``gpfuse export RUN`` (to ``RUN/model.onnx``): what the command printed."""
    code, output = run_gpfuse("export", run, *extra)
    assert code == 0, output
    return output


def _predict_both(run: Path, data: Path, out: Path, *extra: str) -> tuple[Path, Path]:
    """``gpfuse predict`` with torch, then with ONNX Runtime: the two outputs."""
    suffix = out.suffix
    paths = out.with_name(f"{out.stem}_torch{suffix}"), out.with_name(f"{out.stem}_onnx{suffix}")
    for path, engine in zip(paths, ("torch", "onnxruntime"), strict=True):
        code, output = run_gpfuse("predict", run, data, "--out", path, "--engine", engine, *extra)
        assert code == 0, output
    return paths


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A one-epoch EA-DK run exported to ``RUN/model.onnx``: (run folder, its polyp folder, the export's output)."""
    with contextlib.chdir(tmp_path_factory.mktemp("onnx_seg")):
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
        run = run_dir_for(cfg).resolve()
        yield run, polyps.resolve(), _export(run)


@pytest.fixture(scope="module")
def reid_run(tmp_path_factory):
    """A tiny GPF-Net run without reports, exported to ``RUN/model.onnx``: (run folder, its data root)."""
    run, colo = still_reid_run(tmp_path_factory.mktemp("onnx_reid"))
    frames = sorted(colo.rglob("*.jpg"))
    _export(run, *[a for p in frames[:3] for a in ("--verify-with", p)])
    return run, colo


# ---- the exported files ------------------------------------------------------------------------------------


def test_export_carries_the_preprocessing_and_agrees_with_torch(seg_run):
    run, polyps, output = seg_run
    path = run / "model.onnx"
    assert "torchvision" not in output  # the exporter's "torchvision is not installed" lines are dropped
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gpfuse_task"] == "segmentation" and json.loads(meta["input_size"]) == [32, 32]
    assert json.loads(meta["input_mean"]) == pytest.approx([127 / 255] * 3) and float(meta["threshold"]) == 0.5
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor = gpfuse.load(run)
    images = sorted((polyps / "images").iterdir())[:3]
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


def test_a_failed_verification_names_the_difference_and_leaves_no_file(seg_run, tmp_path, monkeypatch):
    run, polyps, _ = seg_run
    # the graph the CLI exported, not traced again (tens of seconds): what is tested is the verification and clean-up
    monkeypatch.setattr(onnx_file, "_export", lambda spec, tmp, opset: shutil.copyfile(run / "model.onnx", tmp))
    with pytest.raises(OnnxMismatchError, match=r"differs from torch by .* on 2 real inputs, above the tolerance"):
        export_onnx(
            run, tmp_path / "strict.onnx", verify_with=sorted((polyps / "images").iterdir())[:2], tolerance=1e-12
        )
    assert list(tmp_path.iterdir()) == []


def test_eval_scores_the_deployed_file_as_the_torch_model(seg_run, tmp_path):
    run = seg_run[0]
    samples = {p.name: p.read_bytes() for p in (run / "samples").iterdir()}
    with contextlib.chdir(run.parent.parent.parent):  # the run's data paths are relative to where it was trained
        code, output = run_gpfuse("eval", run, "--engine", "onnxruntime")
        assert code == 0 and "(onnxruntime)" in output, output
        deployed, torch_figures = (
            json.loads((run / f).read_text()) for f in ("metrics_onnxruntime.json", "metrics.json")
        )
        assert deployed["engine"] == "onnxruntime" and deployed["onnx_file"] == str(run / "model.onnx")
        for split in ("valid", "test"):
            assert deployed[split].keys() == torch_figures[split].keys() and "held_out/Dice" in deployed["test"]
            for key, value in torch_figures[split].items():
                assert deployed[split][key] == pytest.approx(value, abs=1e-4), (split, key)
        assert {p.name: p.read_bytes() for p in (run / "samples").iterdir()} == samples  # the torch model's
        code, output = run_gpfuse("eval", run, "--engine", "onnxruntime", "--onnx", tmp_path / "none.onnx")
        assert code == 2 and "none.onnx: no such ONNX file" in output, output
        code, output = run_gpfuse("eval", run, "--onnx", run / "model.onnx")
        assert code == 2 and "read by --engine onnxruntime only" in output, output


def test_eval_of_a_deployed_file_is_for_2d_segmentation(reid_run):
    run = reid_run[0]
    code, output = run_gpfuse("eval", run, "--engine", "onnxruntime")
    assert code == 2 and "--engine onnxruntime scores 2D segmentation runs" in output and "'retrieval'" in output
    assert not (run / "metrics_onnxruntime.json").exists()


def test_gpf_net_exports_image_only_embeddings_that_rank_as_torch(reid_run):
    run, colo = reid_run
    per_video = {p.parent.parent: p for p in sorted(colo.rglob("*.jpg"))}  # one frame per polyp: no near-ties
    frames = list(per_video.values())[:5]
    path = run / "model.onnx"
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


# ---- agreement, one test per task kind ----------------------------------------------------------------------


def test_segmentation_masks_agree(seg_run, tmp_path):
    run, polyps, _ = seg_run
    images = sorted((polyps / "images").iterdir())
    torch_seg, onnx_seg = gpfuse.load(run), gpfuse.load(run, engine="onnxruntime")
    assert isinstance(onnx_seg.run.model, OnnxModel) and onnx_seg.run.device == torch.device("cpu")
    p_torch, p_onnx = torch_seg.probabilities(images), onnx_seg.probabilities(images)
    assert max(float(np.abs(a - b).max()) for a, b in zip(p_torch, p_onnx, strict=True)) < 1e-4
    # a one-epoch model's masks may be all or nothing at its threshold: cut at the median probability as well
    cut = float(np.median(np.concatenate([p.ravel() for p in p_torch])))
    m_torch, m_onnx = (np.concatenate([(p > cut).ravel() for p in ps]) for ps in (p_torch, p_onnx))
    assert 0 < m_torch.sum() < m_torch.size and _dice(m_torch, m_onnx) >= 0.999
    # the CLI writes the same masks at the run's threshold
    out_torch, out_onnx = _predict_both(run, polyps, tmp_path / "pred", "--save-probabilities")
    for image in images:
        name = f"{image.stem}.png"
        a, b = (np.asarray(Image.open(o / "masks" / name)) > 0 for o in (out_torch, out_onnx))
        assert (a == b).mean() >= 0.999
        pa, pb = (np.asarray(Image.open(o / "probabilities" / name), np.int16) for o in (out_torch, out_onnx))
        assert np.abs(pa - pb).max() <= 1


def _top10(path: Path) -> dict[str, list[str]]:
    ranks: dict[str, list[str]] = {}
    for row in csv.DictReader(path.open()):
        ranks.setdefault(row["query"], []).append(row["gallery"])
    return ranks


def test_reid_rankings_agree(reid_run, tmp_path):
    run, colo = reid_run
    torch_csv, onnx_csv = _predict_both(run, colo, tmp_path / "ranks.csv")
    ranks_torch, ranks_onnx = _top10(torch_csv), _top10(onnx_csv)
    assert ranks_torch and all(1 < len(r) <= 10 for r in ranks_torch.values())
    assert ranks_onnx == ranks_torch
    # through Python: one frame per polyp (no near-ties), raw embeddings and the same top-10 order
    per_video = list({p.parent.parent: p for p in sorted(colo.rglob("*.jpg"))}.values())
    torch_reid, onnx_reid = gpfuse.load(run), gpfuse.load(run, engine="onnxruntime")
    order_torch, dist_torch = torch_reid.rank(per_video[:2], per_video, top_k=10)
    order_onnx, dist_onnx = onnx_reid.rank(per_video[:2], per_video, top_k=10)
    assert np.diff(dist_torch, axis=1).min() > 1e-4  # distinct distances: the order below means something
    assert (order_onnx == order_torch).all() and np.abs(dist_onnx - dist_torch).max() < 1e-4


def test_sentiment_scores_agree(tmp_path):
    from gpfuse.data.synthetic import write_synthetic_mosi

    mosi = write_synthetic_mosi(tmp_path / "mosi", n_videos=10, segments_per_video=4)
    cfg = validate_config(
        {
            "name": "tiny_grf",
            "output_dir": str(tmp_path / "runs"),
            "data": {"source": "mosi", "root": str(mosi), "batch_size": 8, "max_len": {"text": 24, "audio": 1}},
            "model": {"name": "grf", "order": ["text", "audio"], "d_model": 16, "num_heads": 2, "num_layers": 1},
            "train": {"max_epochs": 1, "warmup_epochs": 0, "accelerator": "cpu"},
        },
        "test",
    )
    train(cfg)
    run = run_dir_for(cfg)
    _export(run)
    torch_csv, onnx_csv = _predict_both(run, mosi, tmp_path / "scores.csv")
    rows_torch, rows_onnx = (list(csv.DictReader(p.open())) for p in (torch_csv, onnx_csv))
    assert len(rows_torch) == 10 * 4 and [r["id"] for r in rows_onnx] == [r["id"] for r in rows_torch]
    scores_torch, scores_onnx = (np.array([float(r["score"]) for r in rows]) for rows in (rows_torch, rows_onnx))
    assert np.ptp(scores_torch) > 1e-3  # the scores vary: the comparison is not of constants
    assert np.abs(scores_onnx - scores_torch).max() <= 1e-4


# ---- errors -------------------------------------------------------------------------------------------------


def test_a_missing_file_says_to_export(seg_run, tmp_path):
    run, polyps, _ = seg_run
    with pytest.raises(FileNotFoundError, match=r"no ONNX file; run `gpfuse export"):
        gpfuse.load(run / "model", engine="onnxruntime")  # the model folder holds no model.onnx
    code, output = run_gpfuse(
        "predict", run, polyps, "--out", tmp_path / "p", "--engine", "onnxruntime", "--onnx", tmp_path / "no.onnx"
    )
    assert code == 2 and f"{tmp_path / 'no.onnx'}: no such ONNX file" in output
    code, output = run_gpfuse("predict", run, polyps, "--out", tmp_path / "p", "--engine", "tensorrt")
    assert code == 2 and "engine 'tensorrt': choose one of torch, onnxruntime" in output


def test_a_file_of_another_runs_model_is_refused(seg_run, reid_run, tmp_path):
    run, polyps, _ = seg_run
    other = reid_run[0] / "model.onnx"
    with pytest.raises(ValueError, match=r"holds another model than the run's .*config.json"):
        gpfuse.load(run, engine="onnxruntime", onnx_file=other)
    code, output = run_gpfuse(
        "predict", run, polyps, "--out", tmp_path / "p", "--engine", "onnxruntime", "--onnx", other
    )
    assert code == 2 and "holds another model than the run's" in output


def test_a_batch_that_does_not_fit_the_graph_is_named(reid_run):
    path = reid_run[0] / "model.onnx"
    model = OnnxModel(path, threads=1)
    assert model.gpfuse_config["name"] == "gpf_net" and model.metadata["gpfuse_task"] == "retrieval"
    image = torch.randn(2, 3, 48, 48)
    assert model.eval()({"image": image}).embedding.shape == (2, 16)
    tokens = {"text_ids": torch.ones(2, 4, dtype=torch.long), "text_mask": torch.ones(2, 4, dtype=torch.bool)}
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))}: the ONNX graph takes no \['text_ids', 'text_mask'\]"
    ):
        model({"image": image, **tokens})  # report tokens to an image-only export
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: the ONNX graph needs \['image'\], not given"):
        model(tokens)
    with pytest.raises(AttributeError, match="the ONNX graph has no output 'logits'"):
        _ = model({"image": image}).logits


def test_int8_export_is_guarded_by_its_agreement_with_torch(seg_run, tmp_path, monkeypatch):
    from gpfuse.export.quantize import QuantizationAccuracyError, quantize_int8

    root = seg_run[0].parent.parent.parent
    with contextlib.chdir(root):  # the run's split files are relative to where it was trained
        run = seg_run[0].relative_to(root)  # a relative run folder, as typed on a command line
        report = quantize_int8(run, out=tmp_path / "int8.onnx", calibration=4, min_agreement=0.5)
        meta = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
        assert json.loads(meta["quantization"])["calibration_images"] == 4 and meta["gpfuse_task"] == "segmentation"
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(report.path)).graph.node)
        # the reported agreement is that of the file, through the run's own predictor
        torch_seg, int8_seg = gpfuse.load(run), gpfuse.load(run, engine="onnxruntime", onnx_file=report.path)
        images = split_files(run, "image", 16)
        a = np.concatenate([p.ravel() for p in torch_seg.probabilities(images)]) >= torch_seg.threshold
        b = np.concatenate([p.ravel() for p in int8_seg.probabilities(images)]) >= torch_seg.threshold
        assert report.images == len(images) and report.agreement == pytest.approx(
            2 * (a & b).sum() / max(1, a.sum() + b.sum()), abs=1e-9
        )
        assert report.agreement >= 0.5 and report.largest_difference > 0  # int8 is not fp32

        def flipped(src, dst, calibration):  # a "quantiser" whose file predicts the opposite mask
            model = onnx.load(str(src))
            out = model.graph.output[0].name
            for node in model.graph.node:
                node.output[:] = [f"{out}__raw" if o == out else o for o in node.output]
            model.graph.node.append(onnx.helper.make_node("Neg", [f"{out}__raw"], [out]))
            onnx.save(model, str(dst))

        monkeypatch.setattr("gpfuse.export.quantize._quantize", flipped)
        with pytest.raises(
            QuantizationAccuracyError, match=r"bad.onnx: the int8 file's masks agree .* below the bound 0.9"
        ):
            quantize_int8(run, out=tmp_path / "bad.onnx", calibration=2, min_agreement=0.9)
        assert not (tmp_path / "bad.onnx").exists()
        with pytest.raises(ValueError, match=r"min_agreement must be in \(0, 1\], got 1.5"):
            quantize_int8(run, out=tmp_path / "x.onnx", min_agreement=1.5)
