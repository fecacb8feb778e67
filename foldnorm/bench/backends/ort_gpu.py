"""ONNX Runtime with the CUDA or TensorRT execution provider (the `gpu` extra: onnxruntime-gpu).

ORT quietly runs a model elsewhere when a GPU provider cannot start (no driver, no device, missing CUDA or
TensorRT libraries) or cannot take most of its nodes. Every session checks the providers it really got and,
where ORT records it, how many nodes each provider was given; it refuses to pose as a GPU run unless its
provider runs most of the graph. Runs are timed wall-clock around `run_with_iobinding` (which waits for the
device at its end), not with CUDA events as tensorrt and torch are: ORT offers no events on its stream, so
these rows include the host's launch overhead. `cuda_graph=True` captures the run in a CUDA graph (the
providers' `enable_cuda_graph` / `trt_cuda_graph_enable`) and replays it on fixed device buffers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foldnorm.bench.backends.base import Availability, BenchInputs, OpenOptions, OptLevel, RunOptions, Source
from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.errors import BackendUnavailableError, FoldnormError

GPU_INSTALL_HINT = "pip install 'foldnorm[gpu]' (instead of foldnorm[ort]) on a machine with an NVIDIA GPU and CUDA"
RECORD_ASSIGNMENT = {"session.record_ep_graph_assignment_info": "1"}


@dataclass(frozen=True, kw_only=True)
class OrtGpuOptions(OpenOptions):
    """An ONNX Runtime session on a GPU provider: optimization level (None: `disabled` on CUDA, `all` on the
    TensorRT provider), where the TensorRT provider caches its engines (None: no cache), and whether runs
    replay a captured CUDA graph."""

    opt: OptLevel | None = None
    cache_dir: Path | str | None = None
    cuda_graph: bool = False
    label_fields: ClassVar[tuple[str, ...]] = ("opt", "cuda_graph")


def nodes_per_provider(session: Any) -> dict[str, int]:
    """How many nodes ORT assigned to each provider of an `InferenceSession` made with `RECORD_ASSIGNMENT`
    (empty where this ORT cannot tell)."""
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception:  # an ORT without the method (before 1.23) or without the record: nothing to count
        return {}
    counts: dict[str, int] = {}
    for subgraph in subgraphs:
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts


def fallback(wanted: str, providers: Sequence[str], nodes: Mapping[str, int]) -> str | None:
    """Why a session does not really run on `wanted`: ORT dropped that provider, or gave it no more nodes than
    all the others together. None when it runs most of the graph (or ORT did not record nodes)."""
    if wanted not in providers:
        return f"ONNX Runtime fell back to {', '.join(providers) or 'none'} instead of {wanted}"
    total = sum(nodes.values())
    if total and 2 * nodes.get(wanted, 0) <= total:
        others = ", ".join(f"{count} on {name}" for name, count in nodes.items() if name != wanted)
        return f"{wanted} runs only {nodes.get(wanted, 0)} of {total} nodes ({others})"
    return None


@dataclass
class _FixedIO:
    """Device buffers bound once: a captured CUDA graph reads and writes these addresses on every replay."""

    binding: Any
    inputs: dict[str, Any]
    outputs: list[Any]


class OrtGpuSession(OrtSession):
    """An ORT session on a GPU provider; timed runs use I/O binding so inputs and outputs stay on the device.

    With `cuda_graph`, every run (also `run`) goes through one binding of fixed buffers: after a first regular
    run ORT captures the graph and from then on replays it, reading whatever those input buffers hold.
    `device` is where bound buffers live (ORT's device name)."""

    def __init__(self, model: str, options: OrtOptions, providers: Sequence[Any], cuda_graph: bool,
                 device: str = "cuda") -> None:
        super().__init__(model, options, providers, config=RECORD_ASSIGNMENT)
        self.cuda_graph, self.device = cuda_graph, device
        self.nodes = nodes_per_provider(self._session)
        self._fixed: _FixedIO | None = None

    def _fixed_io(self, feeds: Mapping[str, np.ndarray]) -> _FixedIO:
        """The fixed binding, made on first use (after one regular run that tells the output shapes), with
        `feeds` copied into its input buffers."""
        import onnxruntime as ort

        arrays = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
        if self._fixed is None:
            outputs = self._session.run(None, arrays)  # ORT captures from the second run on
            binding = self._session.io_binding()
            inputs = {n: ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for n, a in arrays.items()}
            values = [ort.OrtValue.ortvalue_from_shape_and_type(o.shape, o.dtype.type, self.device, 0)
                      for o in outputs]
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self.output_names, values):
                binding.bind_ortvalue_output(name, value)
            self._fixed = _FixedIO(binding, inputs, values)
            return self._fixed
        for name, value in self._fixed.inputs.items():
            if tuple(value.shape()) != arrays[name].shape:
                raise ValueError(f"this CUDA graph session was captured for {name} of shape {tuple(value.shape())}, "
                                 f"not {arrays[name].shape}; open another session")
            value.update_inplace(arrays[name])
        return self._fixed

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once and return every output (through the captured graph when there is one)."""
        if not self.cuda_graph:
            return super().run(feeds)
        fixed = self._fixed_io(feeds)
        self._session.run_with_iobinding(fixed.binding)
        return [value.numpy() for value in fixed.outputs]

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Copy the feeds to the GPU once and bind every output to GPU memory (fixed buffers for a graph)."""
        import onnxruntime as ort

        if self.cuda_graph:
            return self._fixed_io(feeds).binding
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array),
                                                                               self.device, 0))
        for name in self.output_names:
            binding.bind_output(name, self.device)
        return binding

    def run_timed(self, prepared: Any) -> None:
        """Run on the bound device buffers (ORT synchronizes the device at the end of a run)."""
        self._session.run_with_iobinding(prepared)

    def _release(self) -> None:
        """Drop the fixed buffers, then the ORT session."""
        self._fixed = None
        super()._release()


class OrtGpuBackend:
    """ONNX Runtime with one GPU execution provider (`CUDAExecutionProvider` or `TensorrtExecutionProvider`)."""

    source: Source = "onnx"

    def __init__(self, name: str, provider: str, description: str) -> None:
        self.name, self.provider = name, provider
        self.description = f"{description}; wall-clock timed (no CUDA events)"

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
            return [OrtGpuOptions(precision=p, cache_dir=options.cache_dir, cuda_graph=options.cuda_graph)
                    for p in options.precisions]
        return [OrtGpuOptions(opt=o, cuda_graph=options.cuda_graph) for o in options.ort_opt]

    def provider_chain(self, precision: str = "fp32", cache_dir: Path | str | None = None,
                       cuda_graph: bool = False) -> list[Any]:
        """The providers to ask for: this one first (with its options), then CUDA/CPU for unsupported nodes."""
        if self.provider == "TensorrtExecutionProvider":
            trt_options: dict[str, Any] = {"trt_fp16_enable": precision == "fp16", "trt_cuda_graph_enable": cuda_graph}
            if cache_dir is not None:
                cache = Path(cache_dir) / "ort-trt"
                cache.mkdir(parents=True, exist_ok=True)
                trt_options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache),
                                   trt_timing_cache_enable=True, trt_timing_cache_path=str(cache))
            return [(self.provider, trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [(self.provider, {"enable_cuda_graph": "1" if cuda_graph else "0"}), "CPUExecutionProvider"]

    def open(self, model: Any, options: OrtGpuOptions) -> OrtGpuSession:
        """Open `model` on the provider; BackendUnavailableError when ORT cannot, or put the graph elsewhere."""
        self.availability().require(self.name)
        chain = self.provider_chain(options.precision, options.cache_dir, options.cuda_graph)
        opt = options.opt or ("disabled" if self.provider == "CUDAExecutionProvider" else "all")
        try:
            session = OrtGpuSession(str(model), OrtOptions(opt=opt), chain, options.cuda_graph)
        except FoldnormError as exc:  # the CPU reference loaded this model: the provider is what failed
            raise BackendUnavailableError(f"{self.name} unavailable: {exc}") from exc
        why = fallback(self.provider, session.providers, session.nodes)
        if why is not None:
            session.close()
            raise BackendUnavailableError(
                f"{self.name} unavailable: {why} (no usable GPU, driver or libraries, or unsupported ops); "
                f"install: {GPU_INSTALL_HINT}")
        return session
