"""Backend pieces testable on the CPU (fp16 rewrite, TensorRT profiles and cache keys, device timing), plus
GPU end-to-end tests marked `gpu` that skip with a reason where no CUDA/TensorRT is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from support.bench_models import conv_bn_onnx
from support.builders import run_ort

from foldnorm.bench.backends import BACKENDS, BenchInputs, RunOptions, get_backend
from foldnorm.bench.backends.fp16 import to_float16
from foldnorm.bench.backends.ort_cpu import OrtOptions
from foldnorm.bench.backends.ort_gpu import OrtGpuOptions
from foldnorm.bench.backends.torch_eager import TorchOptions
from foldnorm.bench.backends.trt import TrtOptions, shape_profiles
from foldnorm.bench.backends.trt_engine import engine_key
from foldnorm.bench.runner import benchmark
from foldnorm.bench.timing import Timed, time_interleaved
from foldnorm.errors import InputSpecError


def test_fp16_copy_runs_and_stays_close(rng: np.random.Generator) -> None:
    model = conv_bn_onnx(rng, tail=True)
    half = to_float16(model)
    onnx.checker.check_model(half, full_check=True)
    assert model.graph.initializer[0].data_type == onnx.TensorProto.FLOAT, "the input model must not change"
    x = rng.normal(0, 1, (2, 4, 8, 8)).astype(np.float32)
    (want,) = run_ort(model, {"x": x})
    (got,) = run_ort(half, {"x": x.astype(np.float16)})
    assert got.dtype == np.float16 and np.all(np.isfinite(got))
    assert np.max(np.abs(got - want)) <= 1e-2 * np.max(np.abs(want))


def test_shape_profiles_span_the_dynamic_batch() -> None:
    profiles = shape_profiles({"x": (4, 3, 8, 8), "k": (2, 5)}, {"x": True, "k": False}, max_batch=16)
    assert profiles["x"] == [[1, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8]]
    assert profiles["k"] == [[2, 5], [2, 5], [2, 5]]


def test_engine_key_changes_with_model_and_options() -> None:
    base = engine_key(b"model", {"precision": "fp32", "trt": "10.0"})
    assert base == engine_key(b"model", {"trt": "10.0", "precision": "fp32"})
    assert base != engine_key(b"model", {"precision": "fp16", "trt": "10.0"})
    assert base != engine_key(b"model2", {"precision": "fp32", "trt": "10.0"})


def test_timing_loop_uses_the_device_clock_when_given() -> None:
    calls: list[str] = []
    variants = {
        "a": Timed(lambda: calls.append("a"), lambda: None, lambda: 0.004),
        "b": Timed(lambda: calls.append("b"), lambda: None),
    }
    stats, samples = time_interleaved(variants, warmup=1, min_time_s=0, max_iterations=4, min_iterations=4)
    assert samples["a"] == [0.004] * 4 and stats["a"].p50_ms == pytest.approx(4.0)
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"], "order alternates every round"


def test_registry_and_unknown_name() -> None:
    assert list(BACKENDS) == ["ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch", "openvino"]
    for backend in BACKENDS.values():
        status = backend.availability()  # never raises, whatever is installed
        assert status.ok or status.message().startswith("unavailable: ")
    with pytest.raises(InputSpecError, match="choose from"):
        get_backend("onnxruntime")


def test_configs_are_typed_open_options(tmp_path: Path) -> None:
    options = RunOptions(ort_opt=("all",), threads=2, precisions=("fp16",), max_batch_size=8, cache_dir=tmp_path)
    inputs = BenchInputs({"x": (2, 3, 8, 8)}, {"x": True})
    assert get_backend("ort-cpu").configs(options, inputs) == [OrtOptions(opt="all", threads=2)]
    assert get_backend("ort-cuda").configs(options, inputs) == [OrtGpuOptions(opt="all")]
    assert get_backend("ort-trt").configs(options, inputs) == [OrtGpuOptions(precision="fp16", cache_dir=tmp_path)]
    assert get_backend("tensorrt").configs(options, inputs) == [
        TrtOptions(precision="fp16", shapes={"x": (2, 3, 8, 8)}, dynamic_batch={"x": True}, max_batch_size=8,
                   cache_dir=tmp_path)]
    torch_cpu = get_backend("torch").configs(options, inputs)[0]
    assert (torch_cpu.device, torch_cpu.precision, torch_cpu.threads) == ("cpu", "fp32", 2)


def test_option_labels_are_the_config_column() -> None:
    assert OrtOptions(opt="all", threads=2).label() == "opt=all,threads=2"
    assert OrtOptions(opt="disabled", spin=True).label() == "opt=disabled"
    assert TorchOptions(device="cpu", threads=1).label() == "device=cpu,threads=1"
    assert TorchOptions(device="cuda", precision="fp16").label() == "device=cuda"
    assert OrtGpuOptions(opt="all").label() == "opt=all"
    assert OrtGpuOptions(precision="fp16").label() == ""
    assert TrtOptions(precision="fp16", shapes={"x": (1, 3)}, max_batch_size=8).label() == ""


def _needs(name: str) -> None:
    status = get_backend(name).availability()
    if not status.ok:
        pytest.skip(f"{name} {status.message()}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt", "tensorrt"])
def test_gpu_backend_end_to_end(name: str, tmp_path: Path, rng: np.random.Generator) -> None:
    _needs(name)
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_onnx(rng, tail=True), path)
    result = benchmark(str(path), backends=[name], warmup=2, iterations=5, batch_size=2, cache_dir=tmp_path)
    assert result.rows, result.unavailable
    for row in result.rows:
        limit = 1e-2 if row.precision == "fp16" else 1e-4
        assert row.nonfinite == 0 and row.max_rel < limit, row
    if name == "tensorrt":
        assert list((tmp_path / "tensorrt").glob("*.engine")), "engines are cached on disk"
        again = benchmark(str(path), backends=[name], warmup=0, iterations=2, batch_size=2, cache_dir=tmp_path)
        assert max(r.build_s for r in again.rows) < max(r.build_s for r in result.rows)


@pytest.mark.gpu
def test_torch_backend_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    result = benchmark("support.bench_models:tiny", backends=["torch"], input_shape=(1, 3, 16, 16), warmup=2,
                       iterations=5)
    cuda_rows = [r for r in result.rows if r.config.startswith("device=cuda")]
    assert {r.precision for r in cuda_rows} == {"fp32", "fp16"}
    for row in cuda_rows:
        assert row.peak_mem_mb is not None and row.nonfinite == 0
        assert row.max_rel < (1e-2 if row.precision == "fp16" else 1e-4)
