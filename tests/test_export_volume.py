"""ONNX export of a saved BiPVL-Seg run: one roi-size patch ``image`` -> ``logits`` with a dynamic batch, the class
prompts' image-independent text states a constant (no token embeddings, no early text layers in the file),
ONNX Runtime agrees with the torch model on real patches, and the sliding-window settings in the metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gpfuse
from gpfuse.export.image_graphs import split_files
from gpfuse.export.volume_graphs import volume_patches

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


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
