"""Build one TensorRT engine from an ONNX file; run as `python -m foldnorm.bench.backends.trt_build SPEC.json`.

It runs in a child process because TensorRT can crash the whole process (not raise) when no usable GPU
is present. SPEC holds: onnx, engine, timing_cache, precision (fp32|fp16), strongly_typed, workspace_bytes,
profiles {input: [min, opt, max]}. Exit 0: the engine file is written; exit 2: a build error on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


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
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT could not build an engine (see its log above)")
    Path(spec["engine"]).write_bytes(bytes(engine))
    partial = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
    partial.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(partial, cache_path)  # builds running side by side never see half a cache


def main(argv: list[str]) -> int:
    """Entry point of the child process."""
    spec = json.loads(Path(argv[1]).read_text())
    try:
        build_engine(spec)
    except Exception as exc:  # the parent turns this into a one-line user-facing message
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
