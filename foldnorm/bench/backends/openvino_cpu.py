"""OpenVINO on the CPU: its own graph compiler (`openvino.compile_model`) on the ONNX file.

Every compiled model is reshaped to the benchmarked input shapes first (static shapes, as `benchmark_app
-shape` does) and pinned to float32 inference: on CPUs with bfloat16 support OpenVINO's default
`INFERENCE_PRECISION_HINT` is bf16, which would time a different computation under an fp32 label.
The `LATENCY` performance hint (one stream, one request) matches the one-request-at-a-time timing loop;
`THROUGHPUT` splits the cores into streams that a single synchronous request cannot use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from foldnorm.bench.backends.base import Availability, BenchInputs, HostSession, OpenOptions, RunOptions, Source
from foldnorm.errors import BackendUnavailableError

OPENVINO_INSTALL_HINT = "pip install 'foldnorm[openvino]'"

Hint = Literal["latency", "throughput"]


@dataclass(frozen=True, kw_only=True)
class OpenVinoOptions(OpenOptions):
    """An OpenVINO CPU compile: performance hint, inference threads (0: OpenVINO's default) and the static
    input shapes the model is reshaped to."""

    hint: Hint = "latency"
    threads: int = 0
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    label_fields: ClassVar[tuple[str, ...]] = ("hint", "threads")

    def properties(self) -> dict[str, str]:
        """The CPU plugin properties this configuration compiles with."""
        props = {"PERFORMANCE_HINT": self.hint.upper(), "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = str(self.threads)
        return props


def _last_line(exc: BaseException) -> str:
    """OpenVINO's messages start with the C++ source location and end with the reason: keep the reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class OpenVinoSession(HostSession):
    """One compiled model and one infer request; timed runs reuse input tensors set once by `prepare`."""

    def __init__(self, path: str, options: OpenVinoOptions) -> None:
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(path)
            if options.shapes:
                model.reshape({name: ov.PartialShape(list(shape)) for name, shape in options.shapes.items()})
            self._compiled = core.compile_model(model, "CPU", options.properties())
        except RuntimeError as exc:  # OpenVINO reports unsupported ops and shapes as RuntimeError
            raise BackendUnavailableError(f"openvino unavailable: OpenVINO cannot compile {path} "
                                          f"({_last_line(exc)})") from exc
        self._request = self._compiled.create_infer_request()
        self.inference_precision: str = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once and return copies of every output, in graph order."""
        result = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.array(result[output]) for output in self._compiled.outputs]

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Set the request's input tensors once, sharing the arrays' memory (the arrays are returned to keep
        them alive while the request reads them)."""
        import openvino as ov

        kept = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        for name, array in kept.items():
            self._request.set_tensor(name, ov.Tensor(array, shared_memory=True))
        return kept

    def run_timed(self, prepared: Any) -> None:
        """Run once on the tensors set by `prepare`."""
        self._request.infer()

    def _release(self) -> None:
        """Drop the request and the compiled model."""
        del self._request, self._compiled


class OpenVinoBackend:
    """OpenVINO runtime, CPU plugin."""

    name = "openvino"
    description = "OpenVINO CPU plugin: the ONNX file compiled by openvino.compile_model, fp32, LATENCY hint"
    source: Source = "onnx"

    def availability(self) -> Availability:
        """Available when the `openvino` package imports and its CPU plugin is listed."""
        if importlib.util.find_spec("openvino") is None:
            return Availability(False, "openvino is not installed", OPENVINO_INSTALL_HINT)
        try:
            import openvino as ov

            devices = ov.Core().available_devices
        except Exception as exc:  # a broken install must not stop the other backends
            return Availability(False, f"OpenVINO does not start ({_last_line(exc)})", OPENVINO_INSTALL_HINT)
        if "CPU" not in devices:
            return Availability(False, f"OpenVINO lists no CPU device (only {', '.join(devices) or 'none'})",
                                OPENVINO_INSTALL_HINT)
        return Availability(True)

    def configs(self, options: RunOptions, inputs: BenchInputs) -> list[OpenVinoOptions]:
        """One configuration: the latency hint at the requested thread count, on the benchmarked shapes."""
        return [OpenVinoOptions(threads=options.threads, shapes=dict(inputs.shapes))]

    def open(self, model: Any, options: OpenVinoOptions) -> OpenVinoSession:
        """Compile the file `model` for the CPU with `options`."""
        self.availability().require(self.name)
        return OpenVinoSession(str(model), options)
