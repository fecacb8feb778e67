"""ONNX Runtime with the CUDA or TensorRT execution provider (the `gpu` extra: onnxruntime-gpu).

ORT quietly runs a model on the CPU when a GPU provider cannot start (no driver, no device, missing CUDA
or TensorRT libraries). Every session checks the providers it really got and refuses to pose as a GPU run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foldnorm.bench.backends.base import Availability, BenchInputs, OpenOptions, OptLevel, RunOptions, Source
from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.errors import BackendUnavailableError

GPU_INSTALL_HINT = "pip install 'foldnorm[gpu]' (instead of foldnorm[ort]) on a machine with an NVIDIA GPU and CUDA"


@dataclass(frozen=True, kw_only=True)
class OrtGpuOptions(OpenOptions):
    """An ONNX Runtime session on a GPU provider: optimization level (None: `disabled` on CUDA, `all` on the
    TensorRT provider), and where the TensorRT provider caches its engines (None: no cache)."""

    opt: OptLevel | None = None
    cache_dir: Path | None = None
    label_fields: ClassVar[tuple[str, ...]] = ("opt",)


class OrtGpuSession(OrtSession):
    """An ORT session on a GPU provider; timed runs use I/O binding so inputs and outputs stay on the device."""

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Copy the feeds to the GPU once and bind every output to GPU memory."""
        import onnxruntime as ort

        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        return binding

    def run_timed(self, prepared: Any) -> None:
        """Run on the bound device buffers (ORT synchronizes the device at the end of a run)."""
        self._session.run_with_iobinding(prepared)


class OrtGpuBackend:
    """ONNX Runtime with one GPU execution provider (`CUDAExecutionProvider` or `TensorrtExecutionProvider`)."""

    source: Source = "onnx"

    def __init__(self, name: str, provider: str, description: str) -> None:
        self.name, self.provider, self.description = name, provider, description

    def availability(self) -> Availability:
        """Available when onnxruntime-gpu offers the provider (whether a session gets it is checked at open)."""
        if importlib.util.find_spec("onnxruntime") is None:
            return Availability(False, "onnxruntime is not installed", GPU_INSTALL_HINT)
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            return Availability(False, f"this onnxruntime build has no {self.provider}", GPU_INSTALL_HINT)
        return Availability(True)

    def configs(self, options: RunOptions, inputs: BenchInputs) -> list[OrtGpuOptions]:
        """CUDA: one configuration per ORT optimization level; TensorRT: one per precision."""
        if self.provider == "TensorrtExecutionProvider":
            return [OrtGpuOptions(precision=p, cache_dir=options.cache_dir) for p in options.precisions]
        return [OrtGpuOptions(opt=o) for o in options.ort_opt]

    def provider_chain(self, precision: str = "fp32", cache_dir: Path | None = None) -> list[Any]:
        """The providers to ask for: this one first (with its options), then CUDA/CPU for unsupported nodes."""
        if self.provider == "TensorrtExecutionProvider":
            trt_options: dict[str, Any] = {"trt_fp16_enable": precision == "fp16"}
            if cache_dir is not None:
                cache = str(cache_dir / "ort-trt")
                Path(cache).mkdir(parents=True, exist_ok=True)
                trt_options.update(trt_engine_cache_enable=True, trt_engine_cache_path=cache,
                                   trt_timing_cache_enable=True, trt_timing_cache_path=cache)
            return [(self.provider, trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [self.provider, "CPUExecutionProvider"]

    def open(self, model: Any, options: OrtGpuOptions) -> OrtGpuSession:
        """Open `model` on the provider; BackendUnavailableError when ORT fell back to another provider."""
        self.availability().require(self.name)
        chain = self.provider_chain(options.precision, options.cache_dir)
        opt = options.opt or ("disabled" if self.provider == "CUDAExecutionProvider" else "all")
        session = OrtGpuSession(str(model), OrtOptions(opt=opt), providers=chain)
        if not session.providers or session.providers[0] != self.provider:
            got = ", ".join(session.providers) or "none"
            session.close()
            raise BackendUnavailableError(
                f"{self.name} unavailable: ONNX Runtime fell back to {got} instead of {self.provider} "
                f"(no usable GPU, driver or libraries); install: {GPU_INSTALL_HINT}"
            )
        return session
