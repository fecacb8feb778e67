"""The TensorRT paths that no GPU here can run: engine builds and their cache, the timing cache, and the session's
logic around TensorRT's engine and context. TensorRT cannot be installed on these machines, so its builder is a
small script, its engine/context/config are stand-ins (support/fake_trt.py), and the CUDA calls run on CPU
tensors; everything else (files, child processes, the fp16 copy, torch tensors) is real. The `gpu` tests at the
end run the same paths on a real GPU and skip with the reason elsewhere."""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from support.bench_models import conv_bn_onnx
from support.builders import parse
from support.fake_trt import FakeEngine, Named, fake_session_parts

from foldnorm.bench.backends import get_backend
from foldnorm.bench.backends.trt import TrtOptions, open_engine
from foldnorm.bench.backends.trt_build import load_timing_cache, save_timing_cache
from foldnorm.bench.backends.trt_engine import BuildTarget, engine_file, fp16_copy
from foldnorm.bench.backends.trt_session import OutputBuffers, StaleEngineError, TrtSession, torch_dtype
from foldnorm.bench.runner import benchmark
from foldnorm.errors import BackendUnavailableError

TRT10 = BuildTarget("10.13.0.35", "NVIDIA H200", strongly_typed=False)
TRT11 = BuildTarget("11.0.0.1", "NVIDIA H200", strongly_typed=True)
PROFILES = {"x": [[1, 4, 8, 8], [2, 4, 8, 8], [2, 4, 8, 8]]}

BUILDER = """
import json, shutil, sys, time
spec = json.load(open(sys.argv[1]))
with open({log!r}, "a") as log:
    log.write(json.dumps(spec) + "\\n")
mode = {mode!r}
if mode == "fail":
    print("warning: the parser saw an odd node", file=sys.stderr)
    print("RuntimeError: the TensorRT ONNX parser rejected model.onnx", file=sys.stderr)
    sys.exit(2)
time.sleep({delay})
if mode == "build":
    shutil.copyfile(spec["onnx"], spec["engine"])  # the "engine" is the model the builder was given
"""


def _builder(tmp_path: Path, mode: str = "build", delay: float = 0.0) -> tuple[list[str], Path]:
    """The command of a stand-in for TensorRT's builder process, and the file where it logs each spec."""
    log = tmp_path / f"{mode}.log"
    script = tmp_path / f"{mode}_builder.py"
    script.write_text(BUILDER.format(log=str(log), mode=mode, delay=delay))
    return [sys.executable, str(script)], log


def _specs(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_an_engine_is_built_once_then_taken_from_the_cache(model_path: str, tmp_path: Path) -> None:
    builder, log = _builder(tmp_path)
    cache = tmp_path / "cache"
    engine, cached = engine_file(model_path, "fp32", PROFILES, cache, TRT10, builder=builder)
    assert not cached and engine.parent == cache / "tensorrt" and engine.suffix == ".engine"
    assert onnx.load(engine).graph == onnx.load(model_path).graph
    assert engine_file(model_path, "fp32", PROFILES, cache, TRT10, builder=builder) == (engine, True)
    assert engine_file(model_path, "fp32", PROFILES, cache, TRT10, builder=builder, rebuild=True) == (engine, False)
    first, second = _specs(log)
    assert first["timing_cache"] == str(cache / "tensorrt" / "timing-10.13.0.35-NVIDIA_H200.cache")
    assert first["engine"] != second["engine"], "every build writes its own .partial file"
    assert all(str(s["engine"]).endswith(".partial") and Path(str(s["engine"])).parent == engine.parent
               for s in (first, second))
    assert not list(engine.parent.glob("*.partial")), "nothing half-written is left"


def test_the_timing_cache_is_one_file_per_tensorrt_version_and_gpu() -> None:
    names = {t.timing_cache_name() for t in (TRT10, TRT11, BuildTarget("10.13.0.35", "NVIDIA A100-SXM4-80GB", False))}
    assert len(names) == 3
    assert BuildTarget("10.13.0.35", "NVIDIA A100-SXM4-80GB", False).timing_cache_name() == \
        "timing-10.13.0.35-NVIDIA_A100-SXM4-80GB.cache"


def test_two_builds_of_one_key_at_once_write_separate_partial_files(model_path: str, tmp_path: Path) -> None:
    builder, log = _builder(tmp_path, delay=1.0)
    cache = str(tmp_path)  # the API takes a str as well as a Path

    def build(_: int) -> tuple[Path, bool]:
        return engine_file(model_path, "fp32", PROFILES, cache, TRT10, builder=builder)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(build, range(2)))
    (engine,) = {path for path, _ in results}
    assert onnx.load(engine).graph == onnx.load(model_path).graph
    assert len({s["engine"] for s in _specs(log)}) == len(_specs(log)) >= 1
    assert not list(engine.parent.glob("*.partial"))


def test_a_build_past_its_time_limit_is_a_failed_build_not_a_crash(model_path: str, tmp_path: Path) -> None:
    builder, _ = _builder(tmp_path, mode="sleep", delay=30)
    with pytest.raises(BackendUnavailableError,
                       match=r"^tensorrt unavailable: the fp32 engine build failed: the build ran longer than 1 s"):
        engine_file(model_path, "fp32", PROFILES, tmp_path, TRT10, builder=builder, timeout_s=1)
    assert not list((tmp_path / "tensorrt").iterdir()), "no engine and no .partial file"


def test_a_failed_build_reports_the_builders_last_line_and_relays_its_warnings(
        model_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    builder, _ = _builder(tmp_path, mode="fail")
    with caplog.at_level(logging.WARNING), pytest.raises(BackendUnavailableError, match=r"parser rejected model\.onnx"):
        engine_file(model_path, "fp16", PROFILES, tmp_path, TRT10, builder=builder)
    assert "the parser saw an odd node" in caplog.text
    empty, _ = _builder(tmp_path, mode="nothing")
    with pytest.raises(BackendUnavailableError, match="the builder wrote no engine"):
        engine_file(model_path, "fp32", PROFILES, tmp_path, TRT10, builder=empty)


def test_fp16_is_built_from_a_float16_copy_on_tensorrt_11_only(model_path: str, tmp_path: Path) -> None:
    builder, _ = _builder(tmp_path)
    trt10, _ = engine_file(model_path, "fp16", PROFILES, tmp_path, TRT10, builder=builder)
    trt11, _ = engine_file(model_path, "fp16", PROFILES, tmp_path, TRT11, builder=builder)
    assert onnx.load(trt10).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert onnx.load(trt11).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert (fp16_copy("fp16", True), fp16_copy("fp16", False), fp16_copy("fp32", True)) == (True, False, False)


def test_an_fp16_engine_of_a_model_float16_cannot_hold_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "big.onnx"
    onnx.save(parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[3] x) => (float[3] y) {
        y = Add (x, big)
    }
    """, {"big": np.array([1.0, 9e4, 2.0], np.float32)}), path)
    builder, log = _builder(tmp_path)
    with pytest.raises(BackendUnavailableError, match="no fp16 engine: initializer 'big' holds 90000"):
        engine_file(str(path), "fp16", {"x": [[3], [3], [3]]}, tmp_path, TRT11, builder=builder)
    assert not log.exists(), "nothing was built"


def test_the_row_says_when_an_engine_takes_float16_inputs_and_outputs(tmp_path: Path) -> None:
    assert TrtOptions(precision="fp16", io="fp16").label() == "io=fp16"
    assert TrtOptions(precision="fp16", io="fp16", cuda_graph=True).label() == "cuda_graph=True,io=fp16"
    assert TrtOptions(precision="fp16").label() == ""  # TensorRT 10: fp16 kernels, float32 I/O


class _Cache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class _Config:
    """A TensorRT builder config's timing-cache calls: `accepts` the bytes TensorRT would take; `damaged` makes
    create_timing_cache raise on stored bytes; `result` is what the build leaves (None: no cache)."""

    def __init__(self, accepts: bytes = b"", damaged: bool = False, result: bytes | None = b"after the build") -> None:
        self.accepts, self.damaged, self.result = accepts, damaged, result
        self.offered: list[bytes] = []

    def create_timing_cache(self, data: bytes) -> _Cache:
        if data and self.damaged:
            raise RuntimeError("invalid timing cache")
        return _Cache(data)

    def set_timing_cache(self, cache: _Cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.offered.append(cache.data)
        return cache.data in (b"", self.accepts)

    def get_timing_cache(self) -> _Cache | None:
        return None if self.result is None else _Cache(self.result)


@pytest.mark.parametrize(("config", "used"), [
    (_Config(accepts=b"stored"), True),
    (_Config(), False),  # a cache of another version or GPU: set_timing_cache returns False
    (_Config(damaged=True), False),
])
def test_a_refused_or_damaged_timing_cache_is_replaced_after_the_build(tmp_path: Path, config: _Config,
                                                                        used: bool) -> None:
    path = tmp_path / "timing.cache"
    path.write_bytes(b"stored")
    assert load_timing_cache(config, path) is used
    assert config.offered == ([b"stored"] if used else [b"stored", b""] if not config.damaged else [b""])
    assert save_timing_cache(config, path)
    assert path.read_bytes() == b"after the build" and [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


def test_a_build_without_a_timing_cache_to_save_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "timing.cache"
    config = _Config(result=None)
    assert load_timing_cache(config, path) is False and config.offered == [b""]
    assert save_timing_cache(config, path) is False and not path.exists()
    path.write_bytes(b"kept")
    assert save_timing_cache(config, path) is False and path.read_bytes() == b"kept"


def _open(tmp_path: Path, engine: FakeEngine | None, shapes: dict[str, tuple[int, ...]] | None = None,
          foreign: list[int] | None = None, cuda_graph: bool = False) -> tuple[TrtSession, object]:
    runtime, cuda = fake_session_parts(engine, foreign)
    path = tmp_path / "m.engine"
    path.write_bytes(b"engine")
    session = TrtSession(path, shapes or {"x": (2, 3)}, cuda_graph=cuda_graph, runtime=runtime,  # type: ignore[arg-type]
                         cuda=cuda)
    return session, cuda


def test_a_session_runs_on_its_own_buffers_and_closes(tmp_path: Path, rng: np.random.Generator) -> None:
    session, cuda = _open(tmp_path, FakeEngine())
    x = rng.normal(0, 1, (2, 3)).astype(np.float32)
    with session:
        (y,) = session.run({"x": x})
        assert session.inputs == ["x"] and session.outputs == ["y"]
        assert y.dtype == np.float32 and np.array_equal(y, 2 * x)
        assert cuda.events == [0, 1] and session.device_timer()() == 0.001  # type: ignore[attr-defined, misc]
    assert session.closed


def test_a_shape_outside_the_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"refuses shape \(2, 3\) for input 'x'"):
        _open(tmp_path, FakeEngine(accepts=lambda shape: shape[0] <= 1))


def test_data_dependent_outputs_get_buffers_from_an_output_allocator(tmp_path: Path) -> None:
    session, _ = _open(tmp_path, FakeEngine(dynamic=True))
    x = np.array([[1.5, -2.0, 3.0], [-1.0, 0.5, -0.25]], np.float32)
    y, pos = session.run({"x": x})
    assert np.array_equal(y, 2 * x) and pos.tolist() == [1.5, 3.0, 0.5]
    _, fewer = session.run({"x": -np.abs(x) + np.eye(2, 3, dtype=np.float32)})
    assert fewer.tolist() == [0.5]
    assert session.peak_memory_bytes() == 2 * 24 + 16, "x, y and the 12 bytes of pos rounded up to 8-byte words"
    with pytest.raises(BackendUnavailableError, match="no CUDA graph for this engine: output 'pos' has a data-dep"):
        _open(tmp_path, FakeEngine(dynamic=True), cuda_graph=True)


def test_output_buffers_grow_and_keep(tmp_path: Path) -> None:
    buffers = OutputBuffers(lambda n: torch.zeros(n, dtype=torch.uint8))
    first = buffers.reallocate("o", 13)
    assert buffers.buffers["o"].numel() == 16
    assert buffers.reallocate("o", 16) == first and buffers.reallocate("o", 17) != first
    buffers.buffers["o"][:8].copy_(torch.tensor([1.0, 2.0]).view(torch.uint8))
    buffers.notify_shape("o", (1, 2))
    assert buffers.output("o", torch.float32).tolist() == [[1.0, 2.0]] and buffers.nbytes() == 24


def test_cuda_graph_captures_after_one_regular_enqueue_and_replays(tmp_path: Path, rng: np.random.Generator) -> None:
    session, cuda = _open(tmp_path, FakeEngine(), cuda_graph=True)
    context = session._context
    assert context.enqueued == 1 and len(cuda.captured) == 1  # type: ignore[attr-defined]
    x = rng.normal(0, 1, (2, 3)).astype(np.float32)
    (y,) = session.run({"x": x})
    session.run_timed(session.prepare({"x": x}))
    assert np.array_equal(y, 2 * x) and cuda.replays == 2 and context.enqueued == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "dtype"), [("FLOAT", torch.float32), ("HALF", torch.float16),
                                             ("BF16", torch.bfloat16), ("FP8", torch.float8_e4m3fn),
                                             ("INT64", torch.int64), ("BOOL", torch.bool)])
def test_tensorrt_types_map_to_torch_by_name(name: str, dtype: torch.dtype) -> None:
    assert torch_dtype(Named(name), "t") == dtype


def test_bf16_engines_run_and_a_type_torch_lacks_is_unavailable(tmp_path: Path) -> None:
    session, _ = _open(tmp_path, FakeEngine(dtype="BF16"))
    (y,) = session.run({"x": np.array([[1.0, 2.0, 3.0], [0.5, 0.25, 8.0]], np.float32)})
    assert y.dtype == np.float32 and y.tolist() == [[2.0, 4.0, 6.0], [1.0, 0.5, 16.0]]
    with pytest.raises(BackendUnavailableError, match="tensor 'x' has TensorRT type INT4, which torch cannot hold"):
        _open(tmp_path, FakeEngine(dtype="INT4"))


def test_each_session_reports_the_memory_it_took_while_both_are_open(tmp_path: Path) -> None:
    first, _ = _open(tmp_path, FakeEngine(), foreign=[100, 5_100])  # TensorRT took 5000 bytes while it opened
    second, _ = _open(tmp_path, FakeEngine(), foreign=[5_100, 14_100])
    buffers = 2 * 2 * 3 * 4  # x and y, float32
    assert (first.peak_memory_bytes(), second.peak_memory_bytes()) == (5_000 + buffers, 9_000 + buffers)


def test_a_cached_engine_that_no_longer_loads_is_rebuilt_once(tmp_path: Path) -> None:
    builds: list[bool] = []
    engine = tmp_path / "k.engine"

    def build(rebuild: bool) -> tuple[Path, bool]:
        builds.append(rebuild)
        engine.write_bytes(b"new" if rebuild else b"stale")
        return engine, not rebuild

    runtime, cuda = fake_session_parts(FakeEngine())
    loads = runtime.deserialize
    runtime.deserialize = lambda data: None if data == b"stale" else loads(data)  # type: ignore[method-assign]
    session = open_engine(build, lambda path: TrtSession(path, {"x": (1, 3)}, runtime=runtime,  # type: ignore[arg-type]
                                                         cuda=cuda))
    assert builds == [False, True] and isinstance(session, TrtSession)
    with pytest.raises(StaleEngineError, match="cannot load the engine"):
        open_engine(lambda rebuild: (engine, False), lambda path: _open(tmp_path, None)[0])


def _needs_tensorrt() -> None:
    status = get_backend("tensorrt").availability()
    if not status.ok:
        pytest.skip(f"tensorrt {status.message()}")


@pytest.mark.gpu
def test_gpu_tensorrt_cuda_graph_rows_timing_cache_and_stale_engine(tmp_path: Path, rng: np.random.Generator) -> None:
    _needs_tensorrt()
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_onnx(rng, tail=True), path)
    result = benchmark(str(path), backends=["tensorrt"], cuda_graph=True, warmup=2, iterations=5, batch_size=2,
                       cache_dir=str(tmp_path))
    assert result.rows and all("cuda_graph=True" in r.config for r in result.rows), result.unavailable
    for row in result.rows:
        assert row.nonfinite == 0 and row.max_rel < (1e-2 if row.precision == "fp16" else 1e-4), row
        assert row.peak_mem_mb is not None and row.peak_mem_mb > 0
    assert len(list((tmp_path / "tensorrt").glob("timing-*.cache"))) == 1
    for engine in (tmp_path / "tensorrt").glob("*.engine"):
        engine.write_bytes(b"not an engine any more")
    again = benchmark(str(path), backends=["tensorrt"], warmup=0, iterations=2, batch_size=2, cache_dir=tmp_path)
    assert len(again.rows) == len(result.rows), again.unavailable


@pytest.mark.gpu
def test_gpu_tensorrt_data_dependent_output(tmp_path: Path) -> None:
    _needs_tensorrt()
    path = tmp_path / "nonzero.onnx"
    onnx.save(parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 3] x) => (int64[2, K] y) {
        y = NonZero (x)
    }
    """), path)
    result = benchmark(str(path), backends=["tensorrt"], precisions=["fp32"], warmup=1, iterations=3)
    assert [r.max_abs for r in result.rows] == [0, 0], result.unavailable
