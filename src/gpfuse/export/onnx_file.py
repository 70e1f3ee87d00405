"""A saved run's model as an ONNX file (``torch.onnx.export(..., dynamo=True)``), verified with ONNX Runtime.

The file has named inputs and outputs (the model's batch keys and output fields, see
:mod:`gpfuse.export.graph_spec`), dynamic batch (and sequence) axes, and the preprocessing it expects as
metadata (``metadata_props``: task, model, input size, mean/std, threshold, ...), so a deployment needs nothing
but the file. Verification runs ONNX Runtime and torch on real inputs from the run's data and fails, naming the
largest difference, above a tolerance; the file is then not left behind.

What each task kind exports is its spec builder's business (``SPEC_BUILDERS``, registered by the modules
imported below).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gpfuse.export import (
    image_graphs,  # noqa: F401  (registers the image tasks' specs)
    sentiment_graphs,  # noqa: F401  (registers the sentiment task's spec)
    volume_graphs,  # noqa: F401  (registers 3D segmentation's spec)
)
from gpfuse.export.graph_spec import IMAGE_ONLY_SPEC_BUILDERS, SPEC_BUILDERS, GraphSpec
from gpfuse.inference.saved_run import SavedRun
from gpfuse.utils.files import atomic_path

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["OnnxMismatchError", "export_onnx", "exportable_tasks"]

log = logging.getLogger(__name__)


class _NoTorchvisionOps(logging.Filter):
    """Drops the exporter's "torchvision is not installed. Skipping torchvision::nms" lines: gpfuse never uses
    torchvision (its ops are not in any gpfuse graph), so they tell a user nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_NoTorchvisionOps())


class OnnxMismatchError(RuntimeError):
    """ONNX Runtime's outputs differ from torch's by more than the tolerance."""


def exportable_tasks() -> tuple[str, ...]:
    return tuple(sorted(SPEC_BUILDERS))


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _verify(path: Path, spec: GraphSpec, tolerance: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = [t.float().numpy() for t in _as_tuple(spec.graph(spec.inputs))]
    got = session.run(spec.outputs, {k: v.numpy() for k, v in spec.inputs.items()})
    n = len(next(iter(spec.inputs.values())))
    largest = 0.0
    for name, g, e in zip(spec.outputs, got, expected, strict=True):
        if g.shape != e.shape:
            raise OnnxMismatchError(f"{path}: ONNX Runtime gives {name} of shape {g.shape}, torch {e.shape}")
        diff = np.abs(g.astype(np.float64) - e)
        worst = float(diff.max()) if diff.size else 0.0
        if not worst <= tolerance:  # NaN fails too
            where = np.unravel_index(int(np.nan_to_num(diff, nan=np.inf).argmax()), g.shape)
            raise OnnxMismatchError(
                f"{path}: ONNX Runtime's {name} differs from torch by {worst:.3g} (at "
                f"{tuple(int(i) for i in where)}) on {n} real inputs, above the tolerance {tolerance:g}"
            )
        largest = max(largest, worst)
    return largest


def _export(spec: GraphSpec, tmp: Path, opset: int) -> None:
    dims: dict[str, torch.export.Dim] = {}
    dynamic = {
        name: {
            axis: dims.setdefault(dim, torch.export.Dim(dim, max=spec.max_sizes.get(dim)))
            for axis, dim in spec.dynamic.get(name, {}).items()
        }
        for name in spec.inputs
    }
    program = torch.onnx.export(
        spec.graph,
        (),
        kwargs={"inputs": spec.inputs},  # a dict as the last of args would be taken for keyword arguments
        dynamo=True,
        opset_version=opset,
        input_names=list(spec.inputs),
        output_names=spec.outputs,
        dynamic_shapes={"inputs": {k: v or None for k, v in dynamic.items()}},
        verbose=False,
        optimize=False,  # _optimize below
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    _optimize(program.model)
    _free_output_names(program.model.graph, spec.outputs)
    program.save(str(tmp))
    _check_dynamic(tmp, spec)


def _optimize(model: ir.Model) -> None:
    """What ``torch.onnx.export(optimize=True)`` runs (onnxscript's ``optimize_ir``: constant folding, the default
    rewrite rules, dead nodes removed, constants lifted to initializers; then ``onnx_fusions.fuse``) without the
    ``SlicesSplit`` rule. Its matcher rescans the whole graph for every Slice node, quadratic in the graph's size:
    185 s of a 277 s export of a tiny BiPVL-Seg (3D Swin windows are thousands of slices) on one AMD EPYC core,
    for a fusion ONNX Runtime does not need. The onnxscript names used here are pinned in constraints.txt."""
    import onnx_ir.passes.common as common
    from onnx_ir import passes
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding as folding
    from onnxscript.rewriter import onnx_fusions

    rules = [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule.name != "SlicesSplit"]
    loop = [
        folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
        ),
        rewriter.RewritePass(rules),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
    ]
    passes.Sequential(
        common.InlinePass(),
        passes.PassManager(loop, steps=2, early_stop=True),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)
    onnx_fusions.fuse(model)


def _free_output_names(graph: ir.Graph, names: Sequence[str]) -> None:
    """The exporter names values after their ops (``embedding`` for a token-embedding lookup): rename those that
    carry an output's name without being that output, or the file defines the name twice (an invalid model)."""
    outputs = {id(v) for v in graph.outputs}
    for n, node in enumerate(graph.all_nodes()):
        for value in node.outputs:
            if value.name in names and id(value) not in outputs:
                value.name = f"{value.name}_inner_{n}"


def _check_dynamic(path: Path, spec: GraphSpec) -> None:
    """torch.onnx.export falls back to a fixed-shape graph when the model fixes a dynamic axis (``len(x)``...):
    refuse it rather than write a file that takes one batch size only."""
    import onnx

    shapes = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path), load_external_data=False).graph.input}
    for name, axes in spec.dynamic.items():
        for axis, dim in axes.items():
            if shapes[name][axis].HasField("dim_value"):
                raise RuntimeError(
                    f"{path}: axis {axis} ({dim}) of input {name!r} came out fixed at {shapes[name][axis].dim_value}: "
                    "the model's code specialises it (e.g. len(tensor) instead of tensor.shape[0])"
                )


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    opset: int = 18,
    verify_with: Sequence[str | Path] | None = None,
    verify_count: int = 4,
    tolerance: float = 1e-4,
    image_only: bool = False,
) -> Path:
    """Write the run's model as ONNX (default ``RUN_DIR/model.onnx``), verified with ONNX Runtime.

    Args:
        run_dir: a finished run folder (or its ``model/`` folder, with ``verify_with``).
        out: the ONNX file to write (atomically). opset: ONNX opset.
        verify_with: real inputs to verify on (images, volumes, ...); default: up to ``verify_count`` of the
            run's validation/test inputs that exist from the current directory.
        tolerance: the largest absolute output difference allowed between ONNX Runtime and torch.
        image_only: export only the ``image`` input, what the model does without its other inputs (GPF-Net
            with no report); the metadata's ``inputs`` lists the file's inputs either way.

    Raises:
        NotImplementedError: a task kind without an export (or without an image-only one). OnnxMismatchError:
        the verification failed (the file is not left behind). RuntimeError: a dynamic axis came out fixed.
    """
    import onnx

    run_dir = Path(run_dir)
    run = SavedRun.read(run_dir)
    builder = (image_only and IMAGE_ONLY_SPEC_BUILDERS.get(run.config.task)) or SPEC_BUILDERS.get(run.config.task)
    if builder is None:
        raise NotImplementedError(
            f"{run_dir}: ONNX export of {run.config.task!r} runs is not implemented "
            f"(exportable: {', '.join(exportable_tasks())})"
        )
    out = Path(out) if out is not None else run_dir / "model.onnx"
    spec = builder(run, run_dir, [Path(p) for p in verify_with] if verify_with else None, verify_count)
    if image_only and list(spec.inputs) != ["image"]:
        raise NotImplementedError(
            f"{run_dir}: {run.config.task!r} runs have no image-only export (their inputs: {', '.join(spec.inputs)})"
        )
    spec.graph.eval()
    meta = {
        "gpfuse_task": run.config.task,
        "gpfuse_model": json.dumps(run.model.gpfuse_config),
        "inputs": json.dumps(list(spec.inputs)),
        **spec.meta,
    }
    with atomic_path(out) as tmp:
        _export(spec, tmp, opset)
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        largest = _verify(tmp, spec, tolerance)
    n = len(next(iter(spec.inputs.values())))
    log.info("%s: verified on %d real inputs, largest difference %.3g", out, n, largest)
    return out
