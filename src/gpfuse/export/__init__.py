"""Exporting saved runs for deployment: ONNX files that carry their preprocessing, verified with ONNX Runtime."""

from gpfuse.export.onnx_file import EXPORTABLE_TASKS, OnnxMismatchError, export_onnx

__all__ = ["EXPORTABLE_TASKS", "OnnxMismatchError", "export_onnx"]
