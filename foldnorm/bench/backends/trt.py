"""Native TensorRT: engines built in a child process and cached on disk (`trt_engine`), run by `TrtSession`.

TensorRT 10 builds fp16 from the fp32 model with `BuilderFlag.FP16` and keeps float32 inputs and outputs;
TensorRT 11 removed that flag (networks are strongly typed), so fp16 there is built from a float16 copy of
the model and takes float16 inputs and outputs, which its rows say (`io=fp16` in the config column). A cached engine
that this TensorRT no longer loads is rebuilt once.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from foldnorm.bench.backends.base import Availability, BenchInputs, OpenOptions, RunOptions, Session, Source
from foldnorm.bench.backends.torch_eager import TORCH_INSTALL_HINT, cuda_available
from foldnorm.bench.backends.trt_engine import build_target, engine_file, fp16_copy, strongly_typed_only
from foldnorm.bench.backends.trt_session import StaleEngineError, TrtSession
from foldnorm.errors import BackendUnavailableError

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = "pip install 'foldnorm[gpu]' on a machine with an NVIDIA GPU (TensorRT 10 or 11)"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "foldnorm"


@dataclass(frozen=True, kw_only=True)
class TrtOptions(OpenOptions):
    """A TensorRT engine: the input shapes it runs, which inputs have a dynamic batch axis, the largest batch
    of its profile (None: the benchmarked one), the engine cache directory (None: ~/.cache/foldnorm), the dtype
    of its float inputs and outputs (`io`) and whether runs replay a captured CUDA graph."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dynamic_batch: Mapping[str, bool] = field(default_factory=dict)
    max_batch_size: int | None = None
    cache_dir: Path | str | None = None
    io: Literal["fp32", "fp16"] = "fp32"
    cuda_graph: bool = False
    label_fields: ClassVar[tuple[str, ...]] = ("cuda_graph",)

    def label(self) -> str:
        """`cuda_graph=True` when set, and `io=fp16` when the engine takes and returns float16 (TensorRT 11 fp16;
        float32 I/O is not labelled)."""
        return ",".join(p for p in (super().label(), "io=fp16" if self.io == "fp16" else "") if p)


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


def open_engine(build: Callable[[bool], tuple[Path, bool]], load: Callable[[Path], Session]) -> Session:
    """Load the engine `build(rebuild=False)` gives; when a cached one no longer loads, build it again once."""
    engine, cached = build(False)
    log.info("tensorrt engine %s (%s)", engine.name, "from cache" if cached else "built")
    try:
        return load(engine)
    except StaleEngineError:
        if not cached:
            raise
        log.warning("the cached TensorRT engine %s no longer loads; rebuilding it", engine)
        engine, _ = build(True)
        return load(engine)


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
        strongly_typed = strongly_typed_only()
        return [TrtOptions(precision=p, shapes=inputs.shapes, dynamic_batch=inputs.dynamic_batch,
                           max_batch_size=options.max_batch_size, cache_dir=options.cache_dir,
                           io="fp16" if fp16_copy(p, strongly_typed) else "fp32", cuda_graph=options.cuda_graph)
                for p in options.precisions]

    def open(self, model: Any, options: TrtOptions) -> Session:
        """Build (or reuse) the engine for the file `model` and load it for `options.shapes`."""
        self.availability().require(self.name)
        target = build_target()
        if (options.io == "fp16") != fp16_copy(options.precision, target.strongly_typed):
            raise BackendUnavailableError(f"tensorrt unavailable: io={options.io} does not match TensorRT "
                                          f"{target.trt_version} at {options.precision}")
        profiles = shape_profiles(options.shapes, options.dynamic_batch, options.max_batch_size or 0)
        cache_dir = Path(options.cache_dir or DEFAULT_CACHE_DIR)

        def build(rebuild: bool) -> tuple[Path, bool]:
            return engine_file(str(model), options.precision, profiles, cache_dir, target, rebuild=rebuild)

        return open_engine(build, lambda engine: TrtSession(engine, options.shapes, cuda_graph=options.cuda_graph))
