"""The backend registry: one entry per runtime; adding one is a module, its tests and one line here."""

from __future__ import annotations

from typing import Any

from foldnorm.bench.backends.base import Availability, Backend, BenchInputs, OpenOptions, RunOptions, Session
from foldnorm.bench.backends.openvino_cpu import OpenVinoBackend
from foldnorm.bench.backends.ort_cpu import OrtCpuBackend
from foldnorm.bench.backends.ort_gpu import OrtGpuBackend
from foldnorm.bench.backends.torch_eager import TorchBackend
from foldnorm.bench.backends.trt import TensorRTBackend
from foldnorm.errors import InputSpecError

BACKENDS: dict[str, Backend[Any]] = {b.name: b for b in (
    OrtCpuBackend(),
    OrtGpuBackend("ort-cuda", "CUDAExecutionProvider", "ONNX Runtime, CUDA execution provider"),
    OrtGpuBackend("ort-trt", "TensorrtExecutionProvider", "ONNX Runtime, TensorRT execution provider"),
    TensorRTBackend(),
    TorchBackend(),
    OpenVinoBackend(),
)}


def get_backend(name: str) -> Backend[Any]:
    """The backend registered as `name`."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputSpecError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)} or all") from None


__all__ = ["BACKENDS", "Availability", "Backend", "BenchInputs", "OpenOptions", "RunOptions", "Session", "get_backend"]
