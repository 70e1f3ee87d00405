"""Exporting saved runs for deployment: ONNX files that carry their preprocessing, verified with ONNX Runtime."""

from gpfuse.export.onnx_file import OnnxMismatchError, export_onnx, exportable_tasks

__all__ = ["OnnxMismatchError", "export_onnx", "exportable_tasks"]
