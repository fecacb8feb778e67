"""Build one TensorRT engine from an ONNX file; run as `python -m foldnorm.bench.backends.trt_build SPEC.json`.

It runs in a child process because TensorRT can crash the whole process (not raise) when no usable GPU
is present. SPEC holds: onnx, engine, timing_cache, precision (fp32|fp16), strongly_typed, workspace_bytes,
profiles {input: [min, opt, max]}. Exit 0: the engine file is written; exit 2: a build error on stderr.
The parent names the timing cache by TensorRT version and GPU; a cache TensorRT still refuses (or a damaged
file) is ignored for this build and replaced by the new one, so one bad file never fails every later build.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def build_engine(spec: dict[str, Any]) -> None:
    """Parse, configure (precision, profiles, timing cache) and serialize the engine described by `spec`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if spec["strongly_typed"] and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(spec["onnx"]):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"the TensorRT ONNX parser rejected {spec['onnx']}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec["workspace_bytes"]))
    if spec["precision"] == "fp16" and not spec["strongly_typed"]:
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10: weak typing picks fp16 kernels where faster
    if spec["profiles"]:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in spec["profiles"].items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    cache_path = Path(spec["timing_cache"])
    load_timing_cache(config, cache_path)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT could not build an engine (see its log above)")
    Path(spec["engine"]).write_bytes(bytes(engine))
    save_timing_cache(config, cache_path)


def load_timing_cache(config: Any, path: Path) -> bool:
    """Give the builder config the timing cache stored at `path`, or a new empty one when there is none or
    TensorRT refuses it (another TensorRT version or GPU, a damaged file). Returns whether the stored one was used;
    a refused file is replaced by `save_timing_cache` after the build."""
    stored = path.read_bytes() if path.exists() else b""
    if stored:
        try:
            if config.set_timing_cache(config.create_timing_cache(stored), ignore_mismatch=False):
                return True
        except Exception as exc:  # a damaged file: TensorRT raises instead of returning False
            log.warning("ignoring the timing cache %s: %s", path, exc)
        else:
            log.warning("TensorRT refused the timing cache %s; starting a new one", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        log.warning("TensorRT refused an empty timing cache; building without one")
    return False


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write the builder's timing cache to `path` atomically (never half a file for a build running alongside).
    Returns False, leaving `path` as it was, when the builder has no cache to give."""
    cache = config.get_timing_cache()
    if cache is None:
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_bytes(bytes(cache.serialize()))
    os.replace(partial, path)
    return True


def main(argv: list[str]) -> int:
    """Entry point of the child process."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # the parent relays these lines
    spec = json.loads(Path(argv[1]).read_text())
    try:
        build_engine(spec)
    except Exception as exc:  # the parent turns this into a one-line user-facing message
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
