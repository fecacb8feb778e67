"""What a bench runs and how its rows are labelled: the batch a static-batch model really takes (issue 15 #1), a
batch sweep, several input shapes (#2), the precision from the model's own dtypes (#3), model size and nodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.bench_models import conv_bn_onnx, two_input_onnx
from support.builders import conv_bn

from foldnorm.bench.runner import benchmark
from foldnorm.bench.workload import model_stats, plan_workload, precision_label
from foldnorm.errors import InputSpecError

FAST = ["--warmup", "0", "--iterations", "3", "--ort-opt", "disabled"]


def _save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, path)
    return str(path)


def test_a_static_batch_runs_at_its_own_batch_and_says_so(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(conv_bn_onnx(rng, batch=1), tmp_path / "static.onnx")
    out = CliRunner().invoke(cli, ["bench", path, "--batch-size", "4", *FAST, "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["batch_sizes"] == [1] and {r["batch_size"] for r in data["rows"]} == {1}
    for row in data["rows"]:  # samples/s of batch 1, not four times that
        assert row["throughput"] == pytest.approx(1e3 / row["latency"]["p50_ms"])
    (note,) = [n for n in data["notes"] if "static" in n]
    assert note.startswith("input 'x' has a static batch dimension (axis 0 is 1): timed at batch 1 only, not at "
                           "batch 4")
    assert data["verify"]["batch_sizes"] == [1]
    text = CliRunner().invoke(cli, ["bench", path, "--batch-size", "1,4,8", *FAST])
    assert text.exit_code == 0 and "(fp32, batch 1)" in text.stdout
    assert "timed at batch 1 only, not at batch 1, 4, 8" in text.stdout


def test_static_batch_at_the_batch_asked_for_has_no_note(rng: np.random.Generator) -> None:
    workload = plan_workload(conv_bn_onnx(rng, batch=2), [2])
    assert workload.batch_sizes == (2,) and workload.note is None and workload.static_batch
    assert workload.verify_batch_sizes() == [2]
    dynamic = plan_workload(conv_bn_onnx(rng), [8, 1, 8])
    assert dynamic.batch_sizes == (8, 1) and dynamic.verify_batch_sizes() == [1, 2, 8]
    assert dynamic.inputs(8).shapes == {"x": (8, 4, 8, 8)} and dynamic.inputs(8).dynamic_batch == {"x": True}


def test_a_batch_sweep_gives_rows_per_batch(model_path: str) -> None:
    result = benchmark(model_path, batch_size=[1, 3], ort_opt=["all"], warmup=0, iterations=2)
    assert result.batch_sizes == [1, 3]
    assert [(r.batch_size, r.variant) for r in result.rows] == [
        (1, "unfolded"), (1, "folded"), (3, "unfolded"), (3, "folded")]
    assert [v.where for v in result.verdicts] == ["ort-cpu opt=all batch 1", "ort-cpu opt=all batch 3"]
    assert result.verify.batch_sizes == [1, 2, 3]
    for row in result.rows:
        assert row.throughput == pytest.approx(row.batch_size * 1e3 / row.latency.p50_ms)


def test_several_input_shapes_size_each_input(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(two_input_onnx(rng), tmp_path / "two.onnx")
    refused = CliRunner().invoke(cli, ["bench", path, *FAST])
    assert refused.exit_code == 1 and "--shape image:1x4x8x8" in refused.stderr
    one_short = CliRunner().invoke(cli, ["bench", path, "--input-shape", "1x4x8x8", *FAST])
    assert one_short.exit_code == 1
    assert "the model has 2 input(s) (image, features) but 1 shape(s) were given" in one_short.stderr
    for shapes in (["1x4x8x6", "1x3"], ["features:1x3", "image:1x4x8x6"]):
        args = [a for s in shapes for a in ("--input-shape", s)]
        out = CliRunner().invoke(cli, ["bench", path, *args, "--batch-size", "2", *FAST, "--format", "json"])
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["verify"]["ok"] and data["batchnorm_folded"] == 2
        assert all(r["max_rel"] < 1e-5 for r in data["rows"])
    result = benchmark(path, input_shapes={"image": (1, 4, 5, 7), "features": (1, 3)}, ort_opt=["disabled"],
                       warmup=0, iterations=2)
    assert result.verify.ok and len(result.rows) == 2


def test_rows_are_labelled_with_the_models_own_precision(tmp_path: Path, rng: np.random.Generator) -> None:
    path = _save(conv_bn(rng, dtype="float16", w_scale=0.3), tmp_path / "half.onnx")
    out = CliRunner().invoke(cli, ["bench", path, *FAST])
    assert out.exit_code == 0, out.output
    assert "model: " in out.stdout and "(fp16, batch 1)" in out.stdout
    assert "errors: against the unfolded model on ort-cpu opt=disabled fp16" in out.stdout
    assert "fp32" not in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("ort-cpu")]
    assert [r[2] for r in rows] == ["fp16", "fp16"]


def test_precision_label_reads_inputs_and_weights(rng: np.random.Generator) -> None:
    assert precision_label(conv_bn(rng)) == "fp32"
    assert precision_label(conv_bn(rng, dtype="float16")) == "fp16"
    mixed = conv_bn(rng, dtype="float16")
    mixed.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # fp32 inputs, fp16 weights
    assert precision_label(mixed) == "fp16 weights, fp32 inputs"


def test_model_size_and_nodes_unfolded_and_folded(model_path: str) -> None:
    result = benchmark(model_path, ort_opt=["disabled"], warmup=0, iterations=2)
    unfolded, folded = result.models["unfolded"], result.models["folded"]
    model = onnx.load(model_path)
    assert (unfolded.bytes, unfolded.nodes) == (model.ByteSize(), 2) == (model_stats(model).bytes, 2)
    assert folded.nodes == 1 and 0 < folded.bytes < unfolded.bytes
    data = result.to_dict()
    assert data["models"] == {"unfolded": {"bytes": unfolded.bytes, "nodes": 2},
                              "folded": {"bytes": folded.bytes, "nodes": 1}}
    out = CliRunner().invoke(cli, ["bench", model_path, *FAST])
    head = out.stdout.splitlines()[0]
    assert f"unfolded {unfolded.bytes / 1e6:.2f} MB, 2 nodes; folded {folded.bytes / 1e6:.2f} MB, 1 node" in head


def test_batch_sizes_must_be_positive(model_path: str) -> None:
    with pytest.raises(InputSpecError, match="positive"):
        benchmark(model_path, batch_size=[0], warmup=0, iterations=1)
    out = CliRunner().invoke(cli, ["bench", model_path, "--batch-size", "1,x"])
    assert out.exit_code == 2
