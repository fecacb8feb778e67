"""Stage 1, export: a PyTorch module to a faithful, unfolded ONNX file, checked against the module."""

from foldnorm.export.exporter import Exporter, ExportResult, export_onnx

__all__ = ["ExportResult", "Exporter", "export_onnx"]
