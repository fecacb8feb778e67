"""ONNX Runtime's GPU providers: the checks and options that run here on ONNX Runtime's CPU build (the node
assignment ORT records, the fallback verdict, the provider options, a str cache directory), and `gpu` tests
that time CUDA-graph sessions where a GPU exists and skip with the reason elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from support.bench_models import conv_bn_onnx
from support.builders import run_ort

from foldnorm.bench.backends import BenchInputs, RunOptions, get_backend
from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.bench.backends.ort_gpu import (
    RECORD_ASSIGNMENT,
    OrtGpuBackend,
    OrtGpuOptions,
    OrtGpuSession,
    fallback,
    nodes_per_provider,
)
from foldnorm.bench.runner import benchmark
from foldnorm.errors import BackendUnavailableError

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def test_the_node_assignment_ort_records_is_counted_per_provider(model_path: str) -> None:
    with OrtSession(model_path, OrtOptions(opt="disabled"), config=RECORD_ASSIGNMENT) as session:
        nodes = nodes_per_provider(session._session)
        assert nodes == {CPU: 2}, "Conv and BatchNormalization, both on the CPU"
        assert fallback(CUDA, session.providers, nodes) == f"ONNX Runtime fell back to {CPU} instead of {CUDA}"
        assert fallback(CPU, session.providers, nodes) is None
    with OrtSession(model_path, OrtOptions(opt="disabled")) as unrecorded:
        assert nodes_per_provider(unrecorded._session) == {}


@pytest.mark.parametrize(("nodes", "verdict"), [
    ({TRT: 3, CUDA: 40, CPU: 2}, f"{TRT} runs only 3 of 45 nodes (40 on {CUDA}, 2 on {CPU})"),
    ({TRT: 20, CUDA: 20}, f"{TRT} runs only 20 of 40 nodes (20 on {CUDA})"),
    ({TRT: 41, CUDA: 3, CPU: 1}, None),
    ({}, None),  # an ORT that records no assignment: the provider list alone decides
])
def test_a_session_that_mostly_runs_elsewhere_is_a_fallback(nodes: dict[str, int], verdict: str | None) -> None:
    assert fallback(TRT, [TRT, CUDA, CPU], nodes) == verdict
    assert fallback(TRT, [CUDA, CPU], nodes) == f"ONNX Runtime fell back to {CUDA}, {CPU} instead of {TRT}"


def test_provider_options_take_a_str_cache_dir_and_the_cuda_graph_switch(tmp_path: Path) -> None:
    trt = OrtGpuBackend("ort-trt", TRT, "TensorRT EP")
    (first, *rest) = trt.provider_chain("fp16", str(tmp_path / "cache"), cuda_graph=True)
    cache = str(tmp_path / "cache" / "ort-trt")
    assert first == (TRT, {"trt_fp16_enable": True, "trt_cuda_graph_enable": True,
                           "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                           "trt_timing_cache_enable": True, "trt_timing_cache_path": cache})
    assert rest == [CUDA, CPU] and (tmp_path / "cache" / "ort-trt").is_dir()
    cuda = OrtGpuBackend("ort-cuda", CUDA, "CUDA EP")
    assert cuda.provider_chain(cuda_graph=True) == [(CUDA, {"enable_cuda_graph": "1"}), CPU]
    assert cuda.provider_chain() == [(CUDA, {"enable_cuda_graph": "0"}), CPU]


def test_cuda_graph_reaches_the_configs_and_the_labels() -> None:
    options = RunOptions(ort_opt=("all",), precisions=("fp32",), cuda_graph=True, cache_dir="engines")
    inputs = BenchInputs({"x": (1, 4, 8, 8)}, {"x": True})
    assert get_backend("ort-cuda").configs(options, inputs) == [OrtGpuOptions(opt="all", cuda_graph=True)]
    (trt,) = get_backend("ort-trt").configs(options, inputs)
    assert (trt.cuda_graph, trt.cache_dir, trt.label()) == (True, "engines", "cuda_graph=True")
    (native,) = get_backend("tensorrt").configs(options, inputs)
    assert native.cuda_graph and native.label() == "cuda_graph=True"
    assert OrtGpuOptions(opt="all", cuda_graph=True).label() == "opt=all,cuda_graph=True"


def test_the_description_says_how_ort_gpu_rows_are_timed() -> None:
    for name in ("ort-cuda", "ort-trt"):
        assert get_backend(name).description.endswith("wall-clock timed (no CUDA events)")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_gpu_ort_cuda_graph_rows_match_the_reference(name: str, tmp_path: Path, rng: np.random.Generator) -> None:
    status = get_backend(name).availability()
    if not status.ok:
        pytest.skip(f"{name} {status.message()}")
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_onnx(rng, tail=True), path)
    result = benchmark(str(path), backends=[name], cuda_graph=True, precisions=["fp32"], warmup=2, iterations=5,
                       batch_size=2, cache_dir=str(tmp_path))
    assert result.rows, result.unavailable
    for row in result.rows:
        assert "cuda_graph=True" in row.config and row.nonfinite == 0 and row.max_rel < 1e-4, row


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_fixed_buffers_are_bound_once_and_refilled_in_place(model_path: str, rng: np.random.Generator,
                                                            cuda_graph: bool) -> None:
    """The session's binding logic on ORT's CPU device (a captured graph needs CUDA; the buffers do not)."""
    model = onnx.load(model_path)
    xs = [rng.normal(0, 1, (2, 4, 8, 8)).astype(np.float32) for _ in range(3)]
    with OrtGpuSession(model_path, OrtOptions(), [CPU], cuda_graph=cuda_graph, device="cpu") as session:
        for x in xs[:2]:
            (got,) = session.run({"x": x})
            np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
        binding = session.prepare({"x": xs[2]})
        session.run_timed(binding)
        (timed,) = binding.copy_outputs_to_cpu()
        np.testing.assert_allclose(timed, run_ort(model, {"x": xs[2]})[0], rtol=1e-5, atol=1e-6)
        assert (session.prepare({"x": xs[0]}) is binding) is cuda_graph, "a graph session keeps one binding"
        if cuda_graph:
            with pytest.raises(ValueError, match=r"captured for x of shape \(2, 4, 8, 8\), not \(1, 4, 8, 8\)"):
                session.run({"x": xs[0][:1]})


@pytest.mark.filterwarnings("ignore:Duplicate provider")  # the chain ends with the CPU provider, here also its head
def test_open_checks_the_session_and_a_provider_that_cannot_load_the_model_is_unavailable(model_path: str,
                                                                                          tmp_path: Path) -> None:
    backend = OrtGpuBackend("ort-cpu-as-gpu", CPU, "the CPU provider through the GPU backend's checks")
    with backend.open(model_path, OrtGpuOptions(opt="disabled")) as session:
        assert session.nodes == {CPU: 2} and not session.cuda_graph
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(BackendUnavailableError, match=r"^ort-cpu-as-gpu unavailable: .*broken\.onnx"):
        backend.open(path, OrtGpuOptions())
