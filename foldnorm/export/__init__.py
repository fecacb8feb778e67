"""Stage 1, export: a PyTorch module to a faithful, unfolded ONNX file, checked against the module."""

from foldnorm.export.exporter import ExportDtype, Exporter, ExportResult, export_onnx

__all__ = ["ExportDtype", "ExportResult", "Exporter", "export_onnx"]
