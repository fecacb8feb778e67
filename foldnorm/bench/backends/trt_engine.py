"""TensorRT engine files: the cache key, the build in a child process, and what the target GPU and TensorRT are.

Engine cache key: SHA-256 of the model bytes plus every build option (precision, shape profile, TensorRT
version, GPU, strong typing). The timing cache is one file per TensorRT version and GPU. Every build writes
its own uniquely named `.partial` file next to the engine and renames it into place, so two processes
building the same key never write into one file. A build that runs past its time limit is stopped and
reported as a failed build, like a builder that exits with an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldnorm.errors import BackendUnavailableError, FoldnormError

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
BUILD_TIMEOUT_S = 1800.0
BUILDER = (sys.executable, "-m", "foldnorm.bench.backends.trt_build")


@dataclass(frozen=True)
class BuildTarget:
    """What an engine is built for besides the model: the TensorRT version, the GPU, and whether networks are
    strongly typed (TensorRT 11, which has no FP16 builder flag)."""

    trt_version: str
    gpu: str
    strongly_typed: bool

    def timing_cache_name(self) -> str:
        """The timing cache file of this TensorRT version on this GPU (TensorRT refuses a foreign one)."""
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", f"timing-{self.trt_version}-{self.gpu}") + ".cache"


def strongly_typed_only() -> bool:
    """True for TensorRT 11+, where the FP16 builder flag is gone; False where TensorRT is not installed."""
    try:
        import tensorrt as trt
    except ImportError:
        return False
    return not hasattr(trt.BuilderFlag, "FP16")


def fp16_copy(precision: str, strongly_typed: bool) -> bool:
    """Whether an engine is built from a float16 copy of the model, and so takes and returns float16: fp16 on
    TensorRT 11. TensorRT 10 builds fp16 from the float32 model with the FP16 flag and keeps float32 I/O."""
    return precision == "fp16" and strongly_typed


def build_target() -> BuildTarget:
    """The installed TensorRT and the first CUDA device."""
    import tensorrt as trt
    import torch

    return BuildTarget(trt.__version__, torch.cuda.get_device_name(0), strongly_typed_only())


def engine_key(model_bytes: bytes, build: Mapping[str, Any]) -> str:
    """The cache key of one engine: the model's hash and every option that changes the engine."""
    digest = hashlib.sha256(model_bytes)
    digest.update(json.dumps(build, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def run_builder(command: Sequence[str], timeout_s: float) -> str | None:
    """Run the builder process; None when it succeeded, else why not (its last error line, or the time limit).
    Its `warning:` lines are logged."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"the build ran longer than {timeout_s:g} s and was stopped"
    lines = done.stderr.strip().splitlines()
    for line in lines:
        if line.startswith("warning: "):
            log.warning("tensorrt build: %s", line.removeprefix("warning: "))
    if done.returncode != 0:
        return lines[-1] if lines else f"the builder process died (status {done.returncode})"
    return None


def _model_bytes(onnx_path: str, precision: str, target: BuildTarget) -> bytes:
    import onnx

    from foldnorm.bench.backends.fp16 import to_float16

    model = onnx.load(onnx_path)
    if fp16_copy(precision, target.strongly_typed):
        try:
            model = to_float16(model)
        except FoldnormError as exc:
            raise BackendUnavailableError(f"tensorrt unavailable: no fp16 engine: {exc}") from exc
    return model.SerializeToString()


def engine_file(onnx_path: str, precision: str, profiles: Mapping[str, list[list[int]]], cache_dir: Path,
                target: BuildTarget, *, rebuild: bool = False, builder: Sequence[str] = BUILDER,
                timeout_s: float = BUILD_TIMEOUT_S) -> tuple[Path, bool]:
    """The engine for `onnx_path` from the cache (unless `rebuild`), or built now by `builder SPEC.json` in a
    child process. Returns (path, cached); BackendUnavailableError when the build fails or runs too long."""
    model_bytes = _model_bytes(onnx_path, precision, target)
    build = {"precision": precision, "profiles": profiles, "trt": target.trt_version, "gpu": target.gpu,
             "strongly_typed": target.strongly_typed}
    engines = Path(cache_dir) / "tensorrt"
    engines.mkdir(parents=True, exist_ok=True)
    engine = engines / f"{engine_key(model_bytes, build)}.engine"
    if engine.exists() and not rebuild:
        return engine, True
    handle, partial_name = tempfile.mkstemp(dir=engines, prefix=f".{engine.stem}.", suffix=".partial")
    os.close(handle)
    partial = Path(partial_name)
    try:
        with tempfile.TemporaryDirectory(prefix="foldnorm-trt-") as tmp:
            source, spec_path = Path(tmp) / "model.onnx", Path(tmp) / "spec.json"
            source.write_bytes(model_bytes)
            spec_path.write_text(json.dumps({
                "onnx": str(source), "engine": str(partial), "timing_cache": str(engines / target.timing_cache_name()),
                "precision": precision, "strongly_typed": target.strongly_typed, "workspace_bytes": WORKSPACE_BYTES,
                "profiles": profiles}))
            log.info("building a TensorRT %s engine for %s", precision, onnx_path)
            failure = run_builder([*builder, str(spec_path)], timeout_s)
        if failure is None and partial.stat().st_size == 0:
            failure = "the builder wrote no engine"
        if failure is not None:
            raise BackendUnavailableError(f"tensorrt unavailable: the {precision} engine build failed: {failure}")
        partial.replace(engine)
    finally:
        partial.unlink(missing_ok=True)
    return engine, False
