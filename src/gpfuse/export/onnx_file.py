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

import numpy as np
import torch

from gpfuse.export import image_graphs  # noqa: F401  (registers the image tasks' specs)
from gpfuse.export.graph_spec import SPEC_BUILDERS, GraphSpec
from gpfuse.inference.saved_run import SavedRun
from gpfuse.utils.files import atomic_path

__all__ = ["OnnxMismatchError", "export_onnx", "exportable_tasks"]

log = logging.getLogger(__name__)


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
        name: {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in spec.dynamic.get(name, {}).items()}
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
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(tmp))


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    opset: int = 18,
    verify_with: Sequence[str | Path] | None = None,
    verify_count: int = 4,
    tolerance: float = 1e-4,
) -> Path:
    """Write the run's model as ONNX (default ``RUN_DIR/model.onnx``), verified with ONNX Runtime.

    Args:
        run_dir: a finished run folder (or its ``model/`` folder, with ``verify_with``).
        out: the ONNX file to write (atomically). opset: ONNX opset.
        verify_with: real inputs to verify on (images, volumes, ...); default: up to ``verify_count`` of the
            run's validation/test inputs that exist from the current directory.
        tolerance: the largest absolute output difference allowed between ONNX Runtime and torch.

    Raises:
        NotImplementedError: a task kind without an export. OnnxMismatchError: the verification failed (the
        file is not left behind).
    """
    import onnx

    run_dir = Path(run_dir)
    run = SavedRun.read(run_dir)
    builder = SPEC_BUILDERS.get(run.config.task)
    if builder is None:
        raise NotImplementedError(
            f"{run_dir}: ONNX export of {run.config.task!r} runs is not implemented "
            f"(exportable: {', '.join(exportable_tasks())})"
        )
    out = Path(out) if out is not None else run_dir / "model.onnx"
    spec = builder(run, run_dir, [Path(p) for p in verify_with] if verify_with else None, verify_count)
    spec.graph.eval()
    meta = {
        "gpfuse_task": run.config.task,
        "gpfuse_model": json.dumps(run.model.gpfuse_config),
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
