"""Exporting saved runs for deployment: ONNX files that carry their preprocessing, verified with ONNX Runtime."""

from gpfuse.export.onnx_file import OnnxMismatchError, export_onnx, exportable_tasks
from gpfuse.export.quantize import QuantizationAccuracyError, QuantizationReport, quantize_int8

__all__ = [
    "OnnxMismatchError",
    "QuantizationAccuracyError",
    "QuantizationReport",
    "export_onnx",
    "exportable_tasks",
    "quantize_int8",
]
