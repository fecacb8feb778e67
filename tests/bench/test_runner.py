"""`foldnorm bench` on the CPU for real: ort-cpu and torch rows, formats, --output, unavailable backends."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli

from foldnorm.bench import RunOptions, TimingOptions
from foldnorm.bench.runner import benchmark
from foldnorm.errors import BackendUnavailableError

FAST = ["--warmup", "1", "--iterations", "3"]


def test_benchmark_ort_cpu_rows(model_path: str) -> None:
    before = Path(model_path).read_bytes()
    result = benchmark(model_path, warmup=1, iterations=4, batch_size=3)
    assert [(r.config, r.variant) for r in result.rows] == [
        ("opt=disabled", "unfolded"), ("opt=disabled", "folded"), ("opt=all", "unfolded"), ("opt=all", "folded")]
    for row in result.rows:
        assert row.latency.iterations == len(row.samples_ms) == 4
        assert row.max_rel < 1e-5 and row.nonfinite == 0
        assert row.throughput > 0 and row.precision == "fp32"
    assert result.rows[0].max_abs == 0  # the reference itself
    assert result.batchnorm_folded == 1 and result.verify.ok
    assert result.environment["cpu"] and result.environment["onnxruntime"]
    assert Path(model_path).read_bytes() == before


def test_option_objects_with_a_keyword_override(model_path: str) -> None:
    result = benchmark(model_path, options=RunOptions(ort_opt=("all",)), timing=TimingOptions(warmup=0, iterations=5),
                       iterations=2)  # the keyword replaces that one field of `timing`
    assert [(r.config, r.variant, r.latency.iterations) for r in result.rows] == [
        ("opt=all", "unfolded", 2), ("opt=all", "folded", 2)]


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "text"])
def test_formats_parse(model_path: str, fmt: str) -> None:
    out = CliRunner().invoke(cli, ["bench", model_path, "--format", fmt, "--ort-opt", "disabled", *FAST])
    assert out.exit_code == 0, out.output
    text = out.stdout
    if fmt == "json":
        data = json.loads(text)
        assert [r["variant"] for r in data["rows"]] == ["unfolded", "folded"]
        assert "samples_ms" not in data["rows"][0] and data["rows"][0]["latency"]["p99_ms"] > 0
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["variant"] for r in rows] == ["unfolded", "folded"] and float(rows[1]["p50_ms"]) > 0
    elif fmt == "markdown":
        table = [line for line in text.splitlines() if line.startswith("|")]
        assert len(table) == 4 and table[0].count("|") == table[2].count("|")
    else:
        assert "ort-cpu" in text and "speed-up" in text


def test_output_dir_writes_every_format_and_plot(model_path: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "results"
    out = CliRunner().invoke(cli, ["bench", model_path, "--output", str(out_dir), "--plot", *FAST])
    assert out.exit_code == 0, out.output
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["bench.csv", "bench.json", "bench.md", "bench.png", "bench.txt"]
    assert (out_dir / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out_dir / "bench.json").read_text())
    assert len(data["rows"][0]["samples_ms"]) == 3


def test_plot_needs_output(model_path: str) -> None:
    out = CliRunner().invoke(cli, ["bench", model_path, "--plot", *FAST])
    assert out.exit_code == 2 and "--output" in out.output


def test_only_unavailable_backend_is_exit_1(model_path: str) -> None:
    out = CliRunner().invoke(cli, ["bench", model_path, "--backend", "tensorrt", *FAST])
    assert out.exit_code == 1
    assert "tensorrt unavailable:" in out.stderr and "install:" in out.stderr
    assert "Traceback" not in out.output


def test_torch_backend_needs_a_pytorch_model(model_path: str) -> None:
    with pytest.raises(BackendUnavailableError, match="needs a PyTorch model"):
        benchmark(model_path, backends=["torch"], warmup=0, iterations=2)


def test_all_runs_what_is_available_and_lists_the_rest(model_path: str) -> None:
    result = benchmark(model_path, backends=["all"], ort_opt=["disabled"], warmup=0, iterations=2)
    assert {r.backend for r in result.rows} == {"ort-cpu", "openvino"}
    assert "needs a PyTorch model" in result.unavailable["torch"]
    for name in ("ort-cuda", "ort-trt", "tensorrt"):
        assert result.unavailable[name].startswith("unavailable:") and "install:" in result.unavailable[name]


@pytest.mark.slow  # exports and benchmarks a PyTorch model
def test_torch_backend_on_cpu_from_an_import_spec() -> None:
    pytest.importorskip("torch")
    result = benchmark("support.bench_models:tiny", backends=["ort-cpu", "torch"], ort_opt=["disabled"],
                       input_shape=(1, 3, 16, 16), batch_size=2, warmup=1, iterations=3)
    torch_rows = [r for r in result.rows if r.backend == "torch"]
    assert [(r.config, r.variant) for r in torch_rows] == [("device=cpu", "unfolded"), ("device=cpu", "folded")]
    for row in torch_rows:
        assert row.max_rel < 1e-5 and row.nonfinite == 0
    assert result.torch_fold_report is not None
    assert result.torch_fold_report.folded == result.torch_fold_report.batchnorm_total == 2


def test_unknown_backend_is_a_usage_error(model_path: str) -> None:
    out = CliRunner().invoke(cli, ["bench", model_path, "--backend", "nope"])
    assert out.exit_code == 2


def test_progress_draws_bars_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import sys

    from foldnorm.cli.bench_cmd import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    progress = Progress()
    progress("opening", None)
    for frac in (0.25, 0.5, 1.0):
        progress("timing ort-cpu", frac)
    err = capsys.readouterr().err
    assert err.startswith("opening\n") and "\rtiming ort-cpu [#####" in err and "100%\n" in err


def test_progress_is_plain_lines_otherwise(capsys: pytest.CaptureFixture) -> None:
    from foldnorm.cli.bench_cmd import Progress

    progress = Progress()
    for frac in (0.5, 1.0):
        progress("timing ort-cpu", frac)
    assert capsys.readouterr().err == "timing ort-cpu\n"


def test_onnx_file_with_dynamic_dims_takes_a_shape(tmp_path: Path, rng: np.random.Generator) -> None:
    from support.builders import conv_bn

    path = tmp_path / "seq.onnx"
    onnx.save(conv_bn(rng, spatial=("T",)), path)
    refused = CliRunner().invoke(cli, ["bench", str(path), *FAST])
    assert refused.exit_code == 1 and "--shape x:1x4x8" in refused.stderr
    result = CliRunner().invoke(cli, ["bench", str(path), *FAST, "--shape", "x:1x4x8", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["batchnorm_folded"] == 1 and data["verify"]["ok"]
