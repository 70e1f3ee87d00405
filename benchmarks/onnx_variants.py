"""ONNX Runtime variants of an exported gpfuse graph for ``inference_speed.py``: uint8 image normalisation put
into the graph, int8 quantisation (static QDQ with real calibration inputs, dynamic), and ORT's graph
optimisations (``ORT_ENABLE_ALL``) applied once and saved, so timed sessions only load the optimised file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

__all__ = ["NUMPY_OF_ONNX", "fuse_image_preprocessing", "int8_dynamic", "int8_static", "optimised", "session"]

#: ONNX input element types -> the numpy dtype to feed
NUMPY_OF_ONNX = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


def cpu_has(*flags: str) -> bool:
    """Whether ``/proc/cpuinfo`` lists any of ``flags`` (False where it cannot be read)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return any(f in words for f in flags)


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session on ``threads`` intra-op threads and one inter-op thread (sequential execution)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimised(src: Path, dst: Path) -> Path:
    """``src`` through ORT's ``ORT_ENABLE_ALL`` graph optimisations, saved once to ``dst`` (this machine's
    kernels: the file is for this machine only)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def fuse_image_preprocessing(src: Path, dst: Path, name: str, mean: Sequence[float], std: Sequence[float]) -> Path:
    """Input ``name`` (B, 3, H, W) float, normalised, becomes (B, H, W, 3) uint8 RGB: the graph casts, scales
    ``(x / 255 - mean) / std`` (one Mul and one Add) and transposes to NCHW itself."""
    model = onnx.load(str(src))
    graph = model.graph
    found = [i for i in graph.input if i.name == name]
    if not found:
        raise KeyError(f"{src}: no graph input {name!r} (inputs: {[i.name for i in graph.input]})")
    dims = found[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != 3:
        raise ValueError(f"{src}: input {name!r} is not (B, 3, H, W)")
    batch = dims[0].dim_param or dims[0].dim_value
    inner = f"{name}__normalised"
    for node in graph.node:
        node.input[:] = [inner if x == name else x for x in node.input]
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array((1.0 / (255.0 * s)).reshape(1, 1, 1, 3), f"{name}__scale"),
            numpy_helper.from_array((-m / s).reshape(1, 1, 1, 3), f"{name}__shift"),
        ]
    )
    steps = [
        helper.make_node("Cast", [name], [f"{name}__float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}__float", f"{name}__scale"], [f"{name}__scaled"]),
        helper.make_node("Add", [f"{name}__scaled", f"{name}__shift"], [f"{name}__nhwc"]),
        helper.make_node("Transpose", [f"{name}__nhwc"], [inner], perm=[0, 3, 1, 2]),
    ]
    nodes = steps + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, [batch, dims[2].dim_value, dims[3].dim_value, 3])
    index = list(graph.input).index(found[0])
    graph.input.remove(found[0])
    graph.input.insert(index, new_input)
    onnx.save(model, str(dst))
    return dst


class _Batches(CalibrationDataReader):
    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _prepared(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing for quantisation (shape inference, basic optimisation); ``src`` itself
    where it fails (the quantiser then works without the inferred shapes)."""
    try:  # in dst's folder: the symbolic shape inference leaves temporary files in the working directory
        with contextlib.chdir(dst.parent):
            quant_pre_process(str(src.resolve()), str(dst.resolve()), skip_symbolic_shape=False)
    except Exception as err:  # any failure: quantise the plain export instead
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        print(f"    note: quant_pre_process failed on {src.name} ({reason}); quantising it as exported")
        return src
    return dst


def int8_static(src: Path, dst: Path, calibration: Sequence[dict[str, np.ndarray]], reduce_range: bool) -> Path:
    """Static int8: QDQ, weights int8 per channel, activations uint8, ranges (MinMax) from ``calibration``
    (real model inputs, in the graph's own input form)."""
    prepared = _prepared(src, dst.with_name(dst.stem + "_pre.onnx"))
    quantize_static(
        str(prepared),
        str(dst),
        _Batches(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return dst


def int8_dynamic(src: Path, dst: Path, reduce_range: bool) -> Path:
    """Dynamic int8 of the MatMul / Gemm layers (weights int8 per channel, activations quantised at run time);
    convolutions stay fp32 (ORT's dynamic ConvInteger is slower than fp32 and loses accuracy)."""
    prepared = _prepared(src, dst.with_name(dst.stem + "_pre.onnx"))
    quantize_dynamic(
        str(prepared),
        str(dst),
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return dst
