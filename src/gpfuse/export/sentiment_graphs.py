"""Export spec of the sentiment runs (task ``regression``: GRF, the unimodal baseline, PGF-Net) -> ``score`` (B,).

ONNX inputs are the batch keys :class:`~gpfuse.inference.sentiment.SentimentPredictor` builds, for the
modalities the model reads: GRF ``text`` (B, L_text, H) frozen text-encoder states + ``text_mask`` (B, L_text)
bool, ``audio`` (B, L_audio, D_audio) standardised + ``audio_mask``, ``vision`` + ``vision_mask``; PGF-Net
``text_ids`` (B, L_text) int64 token ids of its own backbone + ``text_mask`` instead of the states. The batch
axis is dynamic and shared by all inputs; each modality's length axis is dynamic too, shared by its features and
its mask, except where the run's data give a single step (e.g. CMU-MOSI's utterance-level openSMILE audio,
``data.max_len.audio`` 1): a size-1 example axis is traced as a constant, so such a modality is exported with
length 1, which is all the run reads (the metadata ``dynamic_axes`` lists what is dynamic). The text length is
at most the backbone's 512 positions.

PGF-Net is exported from a rebuilt copy of the run's model (the run's own model is never changed) with its LoRA
adapters merged into the backbone's weights by peft's per-layer merge; its fusion steps run inside the frozen
backbone through forward hooks, which ``torch.export`` traces into the graph. The copy is rebuilt rather than
deep-copied: a deep copy keeps hooks that are closures over the original model, whose fusion steps would then
be skipped silently.

Verification inputs are real utterances of the run's test (then validation) split, made by the run's own
sentiment data module with the run's standardisation statistics; ``verify_with`` names another data root of
the run's layout instead (a CMU-MOSI folder or a feature pickle), whose test split is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from gpfuse.config import SentimentDataConfig
from gpfuse.encoders.sequence import SequenceProjection
from gpfuse.export.graph_spec import BatchGraph, GraphSpec, register_spec
from gpfuse.inference.saved_run import SavedRun
from gpfuse.inference.sentiment import SentimentPredictor
from gpfuse.models import GRF, PGFNet, UnimodalRegressor, create_model

if TYPE_CHECKING:
    from gpfuse.tasks.sentiment_data import SentimentDataModule

__all__ = ["merged_lora_copy", "model_modalities", "sentiment_spec", "split_batch"]

#: the largest score difference allowed between the merged-LoRA copy and the run's model
MERGE_TOLERANCE = 1e-4


def model_modalities(model: nn.Module, modalities: Sequence[str]) -> list[str]:
    """The run's ``modalities`` the model reads, in the run's order."""
    if isinstance(model, PGFNet):
        read = {"text", *model.modalities}
    elif isinstance(model, GRF):
        read = set(model.order)
    elif isinstance(model, UnimodalRegressor):
        read = {model.modality}
    else:
        raise NotImplementedError(f"ONNX export of a {type(model).__name__} sentiment model is not implemented")
    return [m for m in modalities if m in read]


def _length_limit(model: nn.Module, modality: str) -> int | None:
    """The longest sequence of ``modality`` the model takes: its table of positions (GRF, unimodal), else None."""
    projection: SequenceProjection | None = None
    if isinstance(model, GRF) and modality in model.projections:
        projection = cast(SequenceProjection, model.projections[modality])
    elif isinstance(model, UnimodalRegressor) and modality == model.modality:
        projection = model.projection
    return None if projection is None else len(projection.pos.pe)


def _input_keys(modalities: Sequence[str], tokens: bool) -> list[str]:
    keys: list[str] = []
    for m in modalities:
        keys += ["text_ids" if m == "text" and tokens else m, f"{m}_mask"]
    return keys


def _data_module(run: SavedRun, root: Path | None) -> SentimentDataModule:
    from gpfuse.tasks.kinds import TASK_KINDS

    d = cast(SentimentDataConfig, run.config.data)
    stats = {m: s for m, s in run.stats.items() if m in d.modalities and isinstance(s, dict)}
    data = cast(
        "SentimentDataModule",
        TASK_KINDS["regression"].data(run.config, stats or None, None if root is None else str(root)),
    )
    try:
        data.setup()
    except FileNotFoundError as err:
        where = root or Path(d.root)
        raise FileNotFoundError(
            f"{run.folder}: the run's sentiment data ({d.source} at {where}, data.root relative to where it was "
            f"trained) is not found from here, so there are no real inputs to verify the export on; give a data "
            f"root of the run's layout (--verify-with). ({err})"
        ) from None
    return data


def split_batch(run: SavedRun, root: Path | None, limit: int) -> dict[str, Tensor]:
    """Up to ``limit`` (at least 2, so the batch axis can be dynamic) real utterances of the test, then the
    validation split of the run's data (or of the data at ``root``, test split), as the batch the model reads:
    ``{key: (N, ...)}`` in the ONNX input order."""
    from gpfuse.tasks.sentiment_data import FeatureDataset

    data = _data_module(run, root)
    d = cast(SentimentDataConfig, run.config.data)
    modalities = model_modalities(run.model, d.modalities)
    tokens = getattr(run.model, "text_input", "states") == "tokens"
    items: list[dict[str, Tensor]] = []
    for name in ("test",) if root else ("test", "valid"):
        if name in data.splits:
            dataset = FeatureDataset(data.splits[name], list(d.modalities))
            items += [dataset[i] for i in range(min(len(dataset), max(limit, 2) - len(items)))]
    if len(items) < 2:
        raise ValueError(
            f"{root or d.root}: {len(items)} utterance(s) in the test and validation splits; the export verifies "
            "on at least 2 (a batch of one would fix the batch axis)"
        )
    batch = default_collate(items)
    return {k: batch[k] for k in _input_keys(modalities, tokens)}


def _merge_lora(backbone: nn.Module) -> int:
    """Merge every peft LoRA layer of ``backbone`` into its base layer (peft's ``merge``) and put the base layer
    in its place, as peft's ``merge_and_unload`` does; returns how many layers were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [(name, m) for name, m in backbone.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in tuned:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(backbone.get_submodule(parent_name), child, layer.get_base_layer())
    return len(tuned)


def merged_lora_copy(model: PGFNet) -> PGFNet:
    """A new PGF-Net with ``model``'s weights and its LoRA merged into the backbone (``model`` is untouched), in
    eval mode; built afresh so its fusion hooks belong to the copy."""
    config = model.gpfuse_config
    copy = cast(PGFNet, create_model(config["name"], **config["options"]))
    copy.load_state_dict(model.state_dict())
    _merge_lora(copy.backbone)
    return copy.to(next(model.parameters()).device).eval()


def _check_merge(run: SavedRun, graph: nn.Module, inputs: dict[str, Tensor]) -> None:
    with torch.no_grad():
        diff = float((graph(inputs) - run.model(inputs).score).abs().max())
    if not diff <= MERGE_TOLERANCE:
        raise RuntimeError(
            f"{run.folder}: the model with LoRA merged differs from the run's model by {diff:.3g} on real inputs "
            f"(above {MERGE_TOLERANCE:g})"
        )


def _meta(run: SavedRun, modalities: list[str], dynamic: dict[str, dict[int, str]]) -> dict[str, str]:
    predictor = SentimentPredictor(run)
    d = cast(SentimentDataConfig, run.config.data)
    stats = {m: run.stats[m] for m in modalities if isinstance(run.stats.get(m), dict)}
    meta: dict[str, Any] = {
        "modalities": modalities,
        "input_dims": {m: predictor.input_dims[m] for m in modalities if m in predictor.input_dims},
        "max_len": {m: d.max_len.get(m) for m in modalities},
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in dynamic.items()},
        "standardization": stats,
        "text_input": "tokens" if predictor.reads_tokens else "states",
        "text_model": predictor.text_model,
        "max_text_len": predictor.max_text,
    }
    notes = {
        "input_note": (
            "text_ids: token ids of text_model's tokenizer, padded to max_text_len, text_mask True on real tokens"
            if predictor.reads_tokens
            else "text: last-layer token states of the frozen text_model (max_text_len tokens), zero on padding"
        )
        + "; other modalities: (B, L, D) float32, (x - mean) / std with the standardization statistics on real "
        "steps, 0 on padding; masks bool, True on real steps",
        "outputs": "score: (B,) float32 sentiment in [-3, 3]",
    }
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    return {**encoded, **notes}


@register_spec("regression")
def sentiment_spec(run: SavedRun, run_dir: Path, given: Sequence[Path] | None, limit: int) -> GraphSpec:
    """GRF / unimodal: ``text`` + ``text_mask``, ``audio`` + ``audio_mask``, ... -> ``score`` (B,); PGF-Net:
    ``text_ids`` + ``text_mask`` + the others -> ``score``, with LoRA merged and the fusion steps in the graph.
    ``given``: one data root of the run's layout to verify on."""
    if given and len(given) != 1:
        raise ValueError(
            f"{run_dir}: a sentiment export verifies on one data root of the run's layout, got {len(given)} paths"
        )
    inputs = split_batch(run, given[0] if given else None, limit)
    d = cast(SentimentDataConfig, run.config.data)
    modalities = model_modalities(run.model, d.modalities)
    dynamic: dict[str, dict[int, str]] = {}
    max_sizes: dict[str, int] = {}
    for m in modalities:
        key = "text_ids" if m == "text" and "text_ids" in inputs else m
        length = {1: f"{m}_len"} if inputs[key].shape[1] > 1 else {}
        dynamic[key] = dynamic[f"{m}_mask"] = {0: "batch", **length}
        if length and (longest := _length_limit(run.model, m)) is not None:
            max_sizes[f"{m}_len"] = longest
    model = merged_lora_copy(run.model) if isinstance(run.model, PGFNet) else run.model
    graph = BatchGraph(model, ["score"])
    if isinstance(run.model, PGFNet):
        _check_merge(run, graph, inputs)
    return GraphSpec(graph, inputs, ["score"], dynamic, _meta(run, modalities, dynamic), max_sizes)
