"""Shared test support: ONNX model builders, fold assertions, small PyTorch models."""
