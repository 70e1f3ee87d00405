"""ONNX export of the sentiment runs (GRF, PGF-Net): the predictor's batch keys as inputs, ``score`` as output,
dynamic batch and sequence lengths, ONNX Runtime agrees with the run's torch model on real split inputs, the
metadata carries the preprocessing, PGF-Net's merged LoRA and in-backbone fusion steps are in the graph, and
missing data is named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_gpfuse, two_layer_minilm
from gpfuse.config import validate_config
from gpfuse.data.synthetic_pickles import write_mmsa_pickle
from gpfuse.export.sentiment_graphs import merged_lora_copy, sentiment_spec, split_batch
from gpfuse.inference.saved_run import SavedRun
from gpfuse.tasks.runner import run_dir_for, train
from gpfuse.tasks.sentiment_data import read_sentiment_source

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MODALITIES = ["text", "audio", "vision"]
BOOL, INT64, FLOAT = 9, 7, 1  # onnx.TensorProto element types


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export_sentiment")


@pytest.fixture(scope="module")
def pickle_data(folder) -> Path:
    """MMSA-layout features: text features and raw text, audio (12 steps) and vision (10 steps) of varying length."""
    return write_mmsa_pickle(folder / "unaligned.pkl", n_per_split=(8, 4, 4))


def _train(folder: Path, name: str, data: Path, model: dict) -> Path:
    cfg = validate_config(
        {
            "name": name,
            "output_dir": str(folder / "runs"),
            "data": {"source": "pickle", "root": str(data), "modalities": MODALITIES, "max_len": {"text": 16}},
            "model": model,
            "train": {"max_epochs": 1, "warmup_epochs": 0, "accelerator": "cpu"},
        },
        "test",
    )
    train(cfg)
    return run_dir_for(cfg)


def _export(run: Path, out: Path) -> Path:
    code, output = run_gpfuse("export", run, "--out", out)
    assert code == 0, output
    return out


@pytest.fixture(scope="module")
def grf(folder, pickle_data) -> tuple[Path, Path]:
    model = {"name": "grf", "order": MODALITIES, "d_model": 16, "num_heads": 2, "num_layers": 1, "ffn_dim": 32}
    run = _train(folder, "grf", pickle_data, model)
    captures = []
    with pytest.MonkeyPatch.context() as patch:
        export = torch.export.export
        patch.setattr(torch.export, "export", lambda *a, **k: captures.append(1) or export(*a, **k))
        path = _export(run, folder / "grf.onnx")
    # the lengths are bounded by GRF's tables of positions up front: unbounded, torch.export refuses them and the
    # exporter traces the model a second time (a third of the export's time)
    assert len(captures) == 1
    return run, path


@pytest.fixture(scope="module")
def pgf(folder, pickle_data) -> tuple[Path, Path]:
    backbone = two_layer_minilm(folder / "minilm_2_layers")
    model = {"name": "pgf_net", "backbone": str(backbone), "fusion_heads": 2, "lora_rank": 4, "adapter": 8}
    run = _train(folder, "pgf", pickle_data, model)
    # one epoch leaves the fusion steps near "keep the text" (gate bias 4, zero adapters) and LoRA near zero:
    # make both matter, so that a lost hook or an unmerged adapter shows in the scores
    saved = SavedRun.read(run)
    torch.manual_seed(0)
    with torch.no_grad():
        for block in saved.model.fusion.blocks:
            block.gate.w.bias.zero_()
            block.adapter.up.weight.normal_(0, 0.2)
        for name, p in saved.model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    saved.model.save_pretrained(saved.folder)
    return run, _export(run, folder / "pgf.onnx")


def _io(path: Path) -> tuple[list[tuple[str, int, list]], list[tuple[str, list]], dict[str, str]]:
    proto = onnx.load(str(path))
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    inputs = [(i.name, i.type.tensor_type.elem_type, shape(i)) for i in proto.graph.input]
    outputs = [(o.name, shape(o)) for o in proto.graph.output]
    return inputs, outputs, {p.key: p.value for p in proto.metadata_props}


def _padded(batch: dict[str, torch.Tensor], extra: dict[str, int]) -> dict[str, torch.Tensor]:
    """``batch`` with ``extra[m]`` padding steps (zeros, mask False) appended to modality ``m``."""
    out = dict(batch)
    for m, n in extra.items():
        key = "text_ids" if m == "text" and "text_ids" in batch else m
        x, mask = batch[key], batch[f"{m}_mask"]
        out[key] = torch.cat([x, x.new_zeros((len(x), n, *x.shape[2:]))], dim=1)
        out[f"{m}_mask"] = torch.cat([mask, mask.new_zeros((len(x), n))], dim=1)
    return out


def _agrees(session, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """ONNX Runtime's scores on ``batch``, checked against ``model``'s within 1e-4."""
    got = session.run(["score"], {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        expected = model(batch).score.numpy()
    assert got.shape == expected.shape == (len(next(iter(batch.values()))),)
    assert np.abs(got - expected).max() <= 1e-4
    return got


def _check_dynamic(path: Path, run: SavedRun) -> dict[str, torch.Tensor]:
    """Real test-split inputs through ONNX Runtime at batch 1 and N and at other sequence lengths."""
    batch = split_batch(run, None, 4)
    assert len(batch["text_mask"]) == 4 and batch["audio_mask"].sum(1).min() < batch["audio_mask"].shape[1]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    full = _agrees(session, run.model, batch)
    one = _agrees(session, run.model, {k: v[:1] for k, v in batch.items()})
    assert np.abs(one - full[:1]).max() <= 1e-4
    _agrees(session, run.model, _padded(batch, {"text": 3, "audio": 2, "vision": 5}))
    return batch


def _check_meta(meta: dict[str, str], run: SavedRun) -> None:
    assert meta["gpfuse_task"] == "regression" and json.loads(meta["modalities"]) == MODALITIES
    assert json.loads(meta["standardization"]) == {m: run.stats[m] for m in ("audio", "vision")}
    dims = json.loads(meta["input_dims"])
    assert dims["audio"] == 5 and dims["vision"] == 20 and int(meta["max_text_len"]) == 16
    assert json.loads(meta["max_len"]) == {"text": 16, "audio": None, "vision": None}
    assert "score: (B,)" in meta["outputs"] and "[-3, 3]" in meta["outputs"]


def test_grf_export_reads_the_predictor_batch_keys_and_agrees_with_torch(grf):
    run_dir, path = grf
    inputs, outputs, meta = _io(path)
    assert inputs == [
        ("text", FLOAT, ["batch", "text_len", 16]),
        ("text_mask", BOOL, ["batch", "text_len"]),
        ("audio", FLOAT, ["batch", "audio_len", 5]),
        ("audio_mask", BOOL, ["batch", "audio_len"]),
        ("vision", FLOAT, ["batch", "vision_len", 20]),
        ("vision_mask", BOOL, ["batch", "vision_len"]),
    ]
    assert outputs == [("score", ["batch"])]
    run = SavedRun.read(run_dir)
    _check_meta(meta, run)
    assert meta["text_input"] == "states" and meta["text_model"] == "minilm"
    assert json.loads(meta["input_dims"])["text"] == 16  # the pickle's text features
    _check_dynamic(path, run)


def _without_hooks(model: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """``model`` (a PGF-Net) without the forward hooks, the fusion steps, of its backbone's ``layers``."""
    for i in layers:
        model.backbone.encoder.layer[i]._forward_hooks.clear()
    return model


def test_pgf_net_export_merges_lora_and_keeps_every_fusion_step(pgf):
    run_dir, path = pgf
    inputs, outputs, meta = _io(path)
    assert [(n, t) for n, t, _ in inputs] == [
        ("text_ids", INT64),
        ("text_mask", BOOL),
        ("audio", FLOAT),
        ("audio_mask", BOOL),
        ("vision", FLOAT),
        ("vision_mask", BOOL),
    ]
    assert inputs[0][2] == ["batch", "text_len"] and inputs[2][2] == ["batch", "audio_len", 5]
    assert outputs == [("score", ["batch"])]
    run = SavedRun.read(run_dir)
    _check_meta(meta, run)
    assert meta["text_input"] == "tokens" and meta["text_model"] == run.config.model["backbone"]
    batch = _check_dynamic(path, run)  # against the run's own model: unmerged LoRA, hooks in place

    merged = merged_lora_copy(run.model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert any("lora" in n for n, _ in run.model.named_parameters())  # the run's model is left as it was
    query = "encoder.layer.0.attention.self.query"
    unmerged = run.model.backbone.get_submodule(query).base_layer.weight
    assert (merged.backbone.get_submodule(query).weight - unmerged).abs().max() > 1e-3  # the merge did something
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["score"], {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        assert (merged(batch).score - run.model(batch).score).abs().max() <= 1e-4
        # without its hooks the backbone is plain MiniLM: ONNX Runtime's scores are far from that model's, and
        # from the model without any one of its fusion steps (1e-2 and more: 100 times the tolerance above)
        assert np.abs(got - _without_hooks(merged_lora_copy(run.model), [0, 1])(batch).score.numpy()).max() > 0.05
        for step in range(2):
            lost = _without_hooks(merged_lora_copy(run.model), [step])
            assert np.abs(got - lost(batch).score.numpy()).max() > 1e-2, f"fusion step {step}"

    # each fusion step, with its cross-attention, gate and adapter, is in the graph inside its backbone layer
    found = set()
    for node in onnx.load(str(path)).graph.node:
        scope = {p.key: p.value for p in node.metadata_props}.get("namespace", "")
        names = [part.split(":")[0] for part in scope.split("/")]  # "module name: class/module name: class/..."
        for outer, inner in zip(names, names[2:]):
            hit = re.fullmatch(r"model\.fusion\.blocks\.(\d+)\.(cross|gate|adapter)", inner)
            if hit and outer.startswith("model.backbone.encoder.layer."):
                found.add((int(outer.rsplit(".", 1)[1]), int(hit[1]), hit[2]))
    assert found == {(i, i, part) for i in range(2) for part in ("cross", "gate", "adapter")}


def test_verification_inputs_come_from_the_run_data_or_a_given_root(grf, folder):
    run_dir, _ = grf
    run = SavedRun.read(run_dir)
    other = write_mmsa_pickle(folder / "other.pkl", n_per_split=(6, 3, 3), seed=7)
    own, given = split_batch(run, None, 3), split_batch(run, other, 3)
    assert list(own) == list(given) == ["text", "text_mask", "audio", "audio_mask", "vision", "vision_mask"]
    assert len(own["text"]) == len(given["text"]) == 3 and not torch.equal(own["text"], given["text"])
    raw = read_sentiment_source(run.config.data)["test"]  # standardised with the run's statistics
    mean, std = (np.float32(run.stats["audio"][k]) for k in ("mean", "std"))
    for i in range(3):
        expected = (raw.features["audio"][i][raw.masks["audio"][i]] - mean) / std
        assert np.allclose(own["audio"][i][own["audio_mask"][i]].numpy(), expected, atol=1e-5)

    missing = folder / "gone.pkl"
    moved = run.config.model_copy(update={"data": run.config.data.model_copy(update={"root": str(missing)})})
    with pytest.raises(FileNotFoundError, match=r"gone\.pkl.*--verify-with"):
        sentiment_spec(SavedRun(run.folder, moved, run.stats, run.model), run_dir, None, 4)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pkl"):
        sentiment_spec(run, run_dir, [folder / "nowhere.pkl"], 4)
