"""What an ONNX export needs from a saved run, whatever its task: a graph over named tensor inputs, real inputs
to trace and verify with, which axes are dynamic, and the preprocessing metadata.

Convention shared with :mod:`gpfuse.inference.onnx_model`: ONNX input names are the model's batch keys
(``image``, ``text_ids``, ``text_mask``, ``audio``, ...) and ONNX output names are fields of its output
(``logits``, ``embedding``, ``score``), so an ONNX Runtime session stands in for the torch model wherever a
predictor calls ``model(batch).field``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from gpfuse.inference.saved_run import SavedRun

__all__ = ["IMAGE_ONLY_SPEC_BUILDERS", "SPEC_BUILDERS", "BatchGraph", "GraphSpec", "SpecBuilder", "register_spec"]


class BatchGraph(nn.Module):
    """``model`` seen through named tensors: ``inputs`` (a dict of the model's batch keys) -> the output
    fields ``outputs`` of ``model(inputs)``, one tensor or a tuple in that order."""

    def __init__(self, model: nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model, self.outputs = model, list(outputs)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor | tuple[Tensor, ...]:
        out = self.model(inputs)
        values = tuple(getattr(out, name) for name in self.outputs)
        return values[0] if len(values) == 1 else values


@dataclass
class GraphSpec:
    """graph: ``forward(inputs: dict[str, Tensor])`` -> the ``outputs`` tensors (``BatchGraph`` or alike).
    inputs: real example inputs, in the ONNX input order (the graph is traced and verified on them).
    dynamic: per input name, ``{axis: dim name}``; axes sharing a name share one dynamic dimension.
    meta: preprocessing and output notes stored as ONNX ``metadata_props``.
    max_sizes: the largest size of a dynamic dimension, by dim name, where the model has one (a table of
    positions): ``torch.export`` refuses an unbounded dim the model bounds and the exporter then traces again."""

    graph: nn.Module
    inputs: dict[str, Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    meta: dict[str, str] = field(default_factory=dict)
    max_sizes: dict[str, int] = field(default_factory=dict)


SpecBuilder = Callable[[SavedRun, Path, Sequence[Path] | None, int], GraphSpec]
"""(run, run folder, inputs to verify with or None, how many of the run's own to take) -> GraphSpec."""

SPEC_BUILDERS: dict[str, SpecBuilder] = {}
IMAGE_ONLY_SPEC_BUILDERS: dict[str, SpecBuilder] = {}
"""Builders of the image-only export (just ``image``) of tasks whose full graph takes more (GPF-Net's reports)."""


def register_spec(*tasks: str, image_only: bool = False) -> Callable[[SpecBuilder], SpecBuilder]:
    """Register the spec builder of one or more task kinds (``RunConfig.task``); ``image_only``: of their
    image-only export (``export_onnx(image_only=True)``)."""

    def wrap(builder: SpecBuilder) -> SpecBuilder:
        for task in tasks:
            (IMAGE_ONLY_SPEC_BUILDERS if image_only else SPEC_BUILDERS)[task] = builder
        return builder

    return wrap
