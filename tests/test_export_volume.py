"""ONNX export of a saved BiPVL-Seg run: one roi-size patch ``image`` -> ``logits`` with a dynamic batch, the class
prompts' image-independent text states a constant (no token embeddings, no early text layers in the file),
ONNX Runtime agrees with the torch model on real patches, the sliding-window settings are in the metadata, and
``gpfuse predict --engine onnxruntime`` labels a volume as torch does. The tests share one export: minutes on a
CPU."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import gpfuse
from conftest import run_gpfuse, tiny_bipvl
from gpfuse.config import validate_config
from gpfuse.data.synthetic_volumes import write_synthetic_decathlon
from gpfuse.export.image_graphs import split_files
from gpfuse.export.volume_graphs import volume_patches
from gpfuse.tasks.runner import run_dir_for, train

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported_bipvl(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny BiPVL-Seg run exported once with ``gpfuse export RUN`` to ``RUN/model.onnx`` (the export takes
    minutes on a CPU; every test here shares it): (run folder, its data root)."""
    folder = tmp_path_factory.mktemp("export3d")
    root = write_synthetic_decathlon(folder / "dec", n_cases=4, shape=(32, 64, 32), num_classes=3)
    small = {"fusion_depth": 1, "fusion_heads": 2, "fusion_mlp": 16, "max_text_len": 8, "align_dim": 16}
    cfg = validate_config(tiny_bipvl(root, folder / "runs", **small), "test")
    train(cfg)
    run = run_dir_for(cfg).resolve()
    code, output = run_gpfuse("export", run)
    assert code == 0, output
    return run, root


@pytest.fixture(scope="module")
def bipvl_run(exported_bipvl):
    return exported_bipvl[0]


def test_prompt_prefix_gives_the_models_own_logits(bipvl_run):
    model = gpfuse.load(bipvl_run).run.model
    x = torch.randn(2, 1, 32, 64, 32)
    with torch.no_grad():
        plain = model({"image": x})
        prefixed = model({"image": x}, model.prompt_prefix())
    for a, b in zip(plain, prefixed, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_bipvl_exports_patches_without_the_prompt_encoding_and_agrees_with_torch(bipvl_run):
    proto = onnx.load(str(bipvl_run / "model.onnx"))  # written by `gpfuse export RUN` (conftest.exported_bipvl)
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is dynamic

    predictor = gpfuse.load(bipvl_run)
    model = predictor.run.model
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["gpfuse_task"] == "segmentation3d" and json.loads(meta["inputs"]) == ["image"]
    assert json.loads(meta["input_size"]) == [32, 64, 32] and meta["input_channels"] == "1"
    assert json.loads(meta["class_names"]) == predictor.class_names and len(predictor.class_names) == 3
    assert float(meta["sw_overlap"]) == 0.75 and meta["sw_batch_size"] == "1" and meta["intensity"] == "mr"
    assert json.loads(meta["pixdim"]) is None

    # the text encoder's token embeddings and its layers before the first fusion are not in the file
    text = model.text_encoder
    dropped = [text.model.embeddings, *text._layers(0), *text._layers(1)]
    dropped_numel = sum(p.numel() for m in dropped for p in m.parameters())
    sizes = [int(np.prod(i.dims)) for i in proto.graph.initializer]
    assert max(sizes) < text.model.embeddings.word_embeddings.weight.numel()
    assert not any("embeddings" in i.name for i in proto.graph.initializer)
    held = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    prefix = model.prompt_prefix()
    assert sum(sizes) <= held - dropped_numel + prefix.numel(), (sum(sizes), held, dropped_numel)

    volumes = split_files(bipvl_run, "image", 2)
    x = volume_patches(predictor, volumes, [32, 64, 32])
    assert x.shape == (2, 1, 32, 64, 32) and x.std() > 0.5  # real, normalised patches
    with torch.no_grad():
        expected = model({"image": x}).logits.numpy()
    session = ort.InferenceSession(str(bipvl_run / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x):
        got = session.run(None, {"image": batch.numpy()})[0]
        assert got.shape == expected[: len(batch)].shape
        assert np.abs(got - expected[: len(batch)]).max() <= 1e-4
    labels_onnx, labels_torch = got.argmax(1), expected.argmax(1)
    assert len(np.unique(labels_torch)) > 1  # the labels compared are not one class everywhere
    assert (labels_onnx == labels_torch).mean() >= 0.999


def test_volume_labels_agree(exported_bipvl, tmp_path):
    run, root = exported_bipvl
    case = root / "imagesTr" / "case_003.nii.gz"
    out_torch, out_onnx = tmp_path / "pred_torch", tmp_path / "pred_onnx"
    for out, engine in ((out_torch, "torch"), (out_onnx, "onnxruntime")):
        code, output = run_gpfuse("predict", run, case, "--out", out, "--engine", engine)
        assert code == 0, output
    torch_labels, onnx_labels = (np.asarray(nib.load(o / "case_003_seg.nii.gz").dataobj) for o in (out_torch, out_onnx))
    assert torch_labels.shape == nib.load(case).shape
    assert len(np.unique(torch_labels)) > 1  # not one class everywhere: the agreement below means something
    assert (torch_labels == onnx_labels).mean() >= 0.999
