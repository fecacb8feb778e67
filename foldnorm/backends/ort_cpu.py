"""ONNX Runtime on the CPU. `opt="disabled"` is the honest baseline: from `basic` up ORT folds Conv+BN itself."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import numpy as np

from foldnorm.backends.base import Availability
from foldnorm.errors import BackendUnavailableError, FoldnormError

OPT_LEVELS = ("disabled", "basic", "extended", "all")


class OrtSession:
    """An `onnxruntime.InferenceSession` behind the `Session` contract."""

    def __init__(self, model: str | bytes, opt: str = "disabled", threads: int = 0) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if opt not in levels:
            raise FoldnormError(f"unknown ONNX Runtime optimization level {opt!r}; use one of {OPT_LEVELS}")
        so.graph_optimization_level = levels[opt]
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped exceptions for invalid models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = model if isinstance(model, str) else "model"
            raise FoldnormError(
                f"{where}: ONNX Runtime cannot load it ({first}); check the file with onnx.checker"
            ) from exc
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once and return every output."""
        return [np.asarray(o) for o in self._session.run(None, dict(feeds))]

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        """CPU feeds need no preparation."""
        return dict(feeds)

    def run_timed(self, feeds: Mapping[str, Any]) -> None:
        """Run once, discarding outputs."""
        self._session.run(None, feeds)

    def synchronize(self) -> None:
        """CPU runs are synchronous."""

    def close(self) -> None:
        """Drop the ORT session."""
        del self._session


class OrtCpuBackend:
    """ONNX Runtime, CPU execution provider."""

    name = "ort-cpu"
    description = "ONNX Runtime, CPU execution provider"

    def availability(self) -> Availability:
        """Available when the `onnxruntime` package is importable."""
        if importlib.util.find_spec("onnxruntime") is None:
            return Availability(False, "onnxruntime is not installed", "pip install 'foldnorm[ort]'")
        return Availability(True)

    def open(self, path: str, **options: Any) -> OrtSession:
        """Open `path` with `opt` (disabled|basic|extended|all) and `threads` (0 = ORT's default)."""
        status = self.availability()
        if not status.ok:
            raise BackendUnavailableError(f"{self.name} {status.message()}")
        return OrtSession(path, opt=options.get("opt", "disabled"), threads=int(options.get("threads", 0)))
