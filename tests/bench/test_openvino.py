"""The OpenVINO backend, run for real on the CPU: availability, configurations, accuracy against ONNX Runtime,
a bench row pair, and a model OpenVINO cannot compile."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.bench_models import conv_bn_onnx
from support.builders import parse, run_ort

from foldnorm.bench.backends import BenchInputs, RunOptions, get_backend
from foldnorm.bench.backends.openvino_cpu import OpenVinoOptions
from foldnorm.bench.runner import benchmark
from foldnorm.errors import BackendUnavailableError


def test_availability_names_the_extra_when_openvino_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_backend("openvino").availability().ok
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an interpreter without the package sees
    status = get_backend("openvino").availability()
    assert status.message() == "unavailable: openvino is not installed; install: pip install 'foldnorm[openvino]'"


def test_one_latency_config_per_thread_setting_on_the_benchmarked_shapes() -> None:
    inputs = BenchInputs({"x": (3, 4, 8, 8)}, {"x": True})
    (config,) = get_backend("openvino").configs(RunOptions(threads=2, precisions=("fp16",)), inputs)
    assert config == OpenVinoOptions(hint="latency", threads=2, shapes={"x": (3, 4, 8, 8)})
    assert config.label() == "hint=latency,threads=2" and config.precision == "fp32"
    assert config.properties() == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                   "INFERENCE_NUM_THREADS": "2"}
    assert OpenVinoOptions(hint="throughput").label() == "hint=throughput"


def test_outputs_match_onnx_runtime_in_fp32_and_the_session_closes(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn_onnx(rng, tail=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = rng.normal(0, 1, (3, 4, 8, 8)).astype(np.float32)
    (want,) = run_ort(model, {"x": x})
    backend = get_backend("openvino")
    with backend.open(path, OpenVinoOptions(shapes={"x": x.shape})) as session:
        assert session.inference_precision == "f32", "bf16 by default on CPUs that have it: pinned to f32"
        (got,) = session.run({"x": x})
        prepared = session.prepare({"x": x})
        session.run_timed(prepared)
    assert session.closed
    assert got.shape == want.shape and np.all(np.isfinite(got))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_bench_gives_an_unfolded_and_a_folded_row(model_path: str) -> None:
    result = benchmark(model_path, backends=["openvino"], threads=1, batch_size=2, warmup=1, iterations=4)
    assert [(r.backend, r.config, r.variant) for r in result.rows] == [
        ("openvino", "hint=latency,threads=1", "unfolded"), ("openvino", "hint=latency,threads=1", "folded")]
    for row in result.rows:
        assert row.precision == "fp32" and row.latency.iterations == 4 and row.latency.p50_ms > 0
        assert row.max_rel < 1e-5 and row.nonfinite == 0
    assert result.rows[0].speedup == 1.0 and result.rows[1].speedup > 0


def test_a_model_openvino_cannot_compile_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18, "custom.domain" : 1]>
    g (float[2, 3] x) => (float[2, 3] y) {
        y = custom.domain.Mystery (x)
    }
    """)
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(BackendUnavailableError, match=r"^openvino unavailable: OpenVINO cannot compile .*custom\.onnx"):
        get_backend("openvino").open(path, OpenVinoOptions())
