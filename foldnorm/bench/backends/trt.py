"""Native TensorRT: engines built in a child process, cached on disk, run with `execute_async_v3`.

Engine cache key: SHA-256 of the model bytes plus every build option (precision, shape profile,
TensorRT version, GPU name). The timing cache is shared by all builds in the cache directory.
TensorRT 10 builds fp16 from the fp32 model with `BuilderFlag.FP16`; TensorRT 11 removed that flag
(networks are strongly typed), so fp16 there is built from a float16 copy of the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from foldnorm.bench.backends.base import Availability, BenchInputs, OpenOptions, RunOptions, Session, Source
from foldnorm.bench.backends.torch_eager import TORCH_INSTALL_HINT, cuda_available
from foldnorm.errors import BackendUnavailableError

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = "pip install 'foldnorm[gpu]' on a machine with an NVIDIA GPU (TensorRT 10 or 11)"
WORKSPACE_BYTES = 4 << 30
BUILD_TIMEOUT_S = 1800
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "foldnorm"


@dataclass(frozen=True, kw_only=True)
class TrtOptions(OpenOptions):
    """A TensorRT engine: the input shapes it runs, which inputs have a dynamic batch axis, the largest batch
    of its profile (None: the benchmarked one) and the engine cache directory (None: ~/.cache/foldnorm)."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dynamic_batch: Mapping[str, bool] = field(default_factory=dict)
    max_batch_size: int | None = None
    cache_dir: Path | None = None


_PROBE = "import tensorrt as t; b = t.Builder(t.Logger(t.Logger.ERROR)); print(t.__version__)"


@cache
def _probe() -> tuple[bool, str]:
    """Create a TensorRT builder in a child process (a missing GPU can kill the process instead of raising)."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "TensorRT did not start within 120 s"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return False, f"TensorRT cannot create a builder here ({tail})"
    return True, done.stdout.strip()


def strongly_typed_only() -> bool:
    """True for TensorRT 11+, where the FP16 builder flag is gone."""
    import tensorrt as trt

    return not hasattr(trt.BuilderFlag, "FP16")


def shape_profiles(shapes: Mapping[str, tuple[int, ...]], dynamic_batch: Mapping[str, bool],
                   max_batch: int) -> dict[str, list[list[int]]]:
    """One [min, opt, max] per input; a dynamic batch axis spans 1..max_batch around the benchmarked batch."""
    profiles = {}
    for name, shape in shapes.items():
        opt = list(shape)
        lo, hi = list(opt), list(opt)
        if dynamic_batch.get(name) and opt:
            lo[0], hi[0] = 1, max(max_batch, opt[0])
        profiles[name] = [lo, opt, hi]
    return profiles


def engine_key(model_bytes: bytes, build: Mapping[str, Any]) -> str:
    """The cache key of one engine: the model's hash and every option that changes the engine."""
    digest = hashlib.sha256(model_bytes)
    digest.update(json.dumps(build, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def build_engine_file(onnx_path: str, precision: str, profiles: dict[str, list[list[int]]],
                      cache_dir: Path) -> tuple[Path, bool]:
    """The engine for `onnx_path` from the cache, or built now in a child process. Returns (path, cached)."""
    import onnx
    import tensorrt as trt
    import torch

    from foldnorm.bench.backends.fp16 import to_float16

    strongly_typed = strongly_typed_only()
    model = onnx.load(onnx_path)
    if precision == "fp16" and strongly_typed:
        model = to_float16(model)
    model_bytes = model.SerializeToString()
    build = {"precision": precision, "profiles": profiles, "trt": trt.__version__,
             "gpu": torch.cuda.get_device_name(0), "strongly_typed": strongly_typed}
    engines = cache_dir / "tensorrt"
    engines.mkdir(parents=True, exist_ok=True)
    engine = engines / f"{engine_key(model_bytes, build)}.engine"
    if engine.exists():
        return engine, True
    with tempfile.TemporaryDirectory(prefix="foldnorm-trt-") as tmp:
        source = Path(tmp) / "model.onnx"
        source.write_bytes(model_bytes)
        partial = engines / f".{engine.name}.partial"
        spec = {"onnx": str(source), "engine": str(partial), "timing_cache": str(engines / "timing.cache"),
                "precision": precision, "strongly_typed": strongly_typed, "workspace_bytes": WORKSPACE_BYTES,
                "profiles": profiles}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        log.info("building a TensorRT %s engine for %s", precision, onnx_path)
        done = subprocess.run([sys.executable, "-m", "foldnorm.bench.backends.trt_build", str(spec_path)],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0 or not partial.exists():
        why = (done.stderr.strip().splitlines() or [f"the builder process died (status {done.returncode})"])[-1]
        raise BackendUnavailableError(f"tensorrt unavailable: the {precision} engine build failed: {why}")
    partial.replace(engine)
    return engine, False


class TrtSession(Session):
    """A deserialized engine with one execution context, fed with torch CUDA tensors."""

    def __init__(self, engine_path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise BackendUnavailableError(f"tensorrt unavailable: cannot load the engine {engine_path}")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._dtypes = {n: torch.from_numpy(np.empty(0, trt.nptype(self._engine.get_tensor_dtype(n)))).dtype
                        for n in names}
        for name in self.inputs:
            self._context.set_input_shape(name, tuple(shapes[name]))
        torch.cuda.reset_peak_memory_stats()
        self._out = {n: torch.empty(tuple(self._context.get_tensor_shape(n)), dtype=self._dtypes[n], device="cuda")
                     for n in self.outputs}
        for name, tensor in self._out.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Copy the feeds to the GPU in the engine's input dtypes and bind them."""
        torch = self._torch
        prepared = {n: torch.from_numpy(np.ascontiguousarray(feeds[n])).to("cuda", self._dtypes[n]).contiguous()
                    for n in self.inputs}
        torch.cuda.current_stream().synchronize()  # the copies ran on the default stream; runs use ours
        return prepared

    def run_timed(self, prepared: Any) -> None:
        """Bind the prepared inputs and enqueue one inference between two CUDA events on the session's stream."""
        for name, tensor in prepared.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        stream = self._stream
        self._events[0].record(stream)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._events[1].record(stream)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once and copy every output back to the host as float32."""
        keep = self.prepare(feeds)
        self.run_timed(keep)
        self.synchronize()
        return [self._out[n].float().cpu().numpy() if self._out[n].is_floating_point() else self._out[n].cpu().numpy()
                for n in self.outputs]

    def synchronize(self) -> None:
        """Wait for the session's stream."""
        self._stream.synchronize()

    def device_timer(self) -> Callable[[], float] | None:
        """CUDA-event time of the last run, in seconds."""
        start, end = self._events
        return lambda: float(start.elapsed_time(end)) / 1e3

    def peak_memory_bytes(self) -> int | None:
        """The engine's activation memory plus the torch-allocated I/O buffers."""
        engine: Any = self._engine
        engine_mem = engine.device_memory_size_v2 if hasattr(engine, "device_memory_size_v2") \
            else engine.device_memory_size  # TensorRT 11 removed device_memory_size
        return int(engine_mem) + int(self._torch.cuda.max_memory_allocated())

    def _release(self) -> None:
        """Release the context, engine and buffers."""
        del self._context, self._engine, self._out


class TensorRTBackend:
    """Native TensorRT (fp32 and fp16 engines), timed with CUDA events."""

    name = "tensorrt"
    description = "native TensorRT engines (fp32, fp16), engine + timing cache on disk, CUDA-event timing"
    source: Source = "onnx"

    def availability(self) -> Availability:
        """Needs the tensorrt package, torch with CUDA, and a builder that starts (probed in a child process)."""
        if importlib.util.find_spec("tensorrt") is None:
            return Availability(False, "the tensorrt package is not installed", TRT_INSTALL_HINT)
        if importlib.util.find_spec("torch") is None:
            return Availability(False, "torch is needed for CUDA buffers", TORCH_INSTALL_HINT)
        if not cuda_available():
            return Availability(False, "no CUDA device is visible to torch", TRT_INSTALL_HINT)
        ok, detail = _probe()
        return Availability(True) if ok else Availability(False, detail, TRT_INSTALL_HINT)

    def configs(self, options: RunOptions, inputs: BenchInputs) -> list[TrtOptions]:
        """One engine per requested precision, for the benchmarked input shapes."""
        return [TrtOptions(precision=p, shapes=inputs.shapes, dynamic_batch=inputs.dynamic_batch,
                           max_batch_size=options.max_batch_size, cache_dir=options.cache_dir)
                for p in options.precisions]

    def open(self, model: Any, options: TrtOptions) -> TrtSession:
        """Build (or reuse) the engine for the file `model` and load it for `options.shapes`."""
        self.availability().require(self.name)
        profiles = shape_profiles(options.shapes, options.dynamic_batch, options.max_batch_size or 0)
        engine, cached = build_engine_file(str(model), options.precision, profiles,
                                           options.cache_dir or DEFAULT_CACHE_DIR)
        log.info("tensorrt engine %s (%s)", engine.name, "from cache" if cached else "built")
        return TrtSession(engine, options.shapes)
