"""Mixed precision (fp32 against fp16), task-level metrics, the noise floor, and the batch sizes that ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import conv_bn, parse

import foldnorm
from foldnorm.bench.backends.fp16 import to_float16
from foldnorm.errors import InputSpecError
from foldnorm.verify.compare import compare_models
from foldnorm.verify.measure import Metric


def classifier(rng: np.random.Generator, classes: int = 10) -> onnx.ModelProto:
    """Conv -> BN -> GlobalAveragePool -> Flatten -> Gemm: logits [N, classes]."""
    w = rng.normal(0, 0.5, (classes, 6)).astype(np.float32)
    return conv_bn(rng, bn_out="b", inits={"fc": w}, outputs=f"float[N, {classes}] y",
                   tail=["p = GlobalAveragePool (b)", "f = Flatten (p)", "y = Gemm <transB = 1> (f, fc)"])


def test_fp32_against_fp16(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = classifier(rng)
    onnx.save(ref, tmp_path / "fp32.onnx")
    onnx.save(to_float16(foldnorm.fold_model(ref).model), tmp_path / "fp16.onnx")
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "fp32.onnx"), str(tmp_path / "fp16.onnx"),
                                      "--format", "json", "--batch-sizes", "1,8"])
    assert result.exit_code == 0, result.output
    (out,) = json.loads(result.stdout)["outputs"]
    assert out["dtype"] == "float16" and (out["rtol"], out["atol"]) == (1e-2, 1e-3)  # the candidate's tolerances
    assert 1e-5 < out["max_rel"] < 1e-2  # fp16 rounding, measured in float64


def test_fp16_outside_its_tolerance_fails(tmp_path: Path, rng: np.random.Generator) -> None:
    ref = classifier(rng)
    cand = to_float16(ref)
    fc = next(t for t in cand.graph.initializer if t.name == "fc")
    fc.CopyFrom(onnx.numpy_helper.from_array((onnx.numpy_helper.to_array(fc) * 1.1).astype(np.float16), "fc"))
    assert not compare_models(ref, cand).ok


def test_top1_and_cosine(rng: np.random.Generator) -> None:
    ref = classifier(rng)
    cand = onnx.ModelProto()
    cand.CopyFrom(ref)
    fc = next(t for t in cand.graph.initializer if t.name == "fc")
    logits = onnx.numpy_helper.to_array(fc)
    fc.CopyFrom(onnx.numpy_helper.from_array((logits * 1.02).astype(np.float32), "fc"))  # 2% off, same ranking
    assert not compare_models(ref, cand).ok
    top1 = compare_models(ref, cand, metric="top1", batch_sizes=(16,))
    assert top1.ok and top1.outputs[0].score == 1.0 and "top1 1" in top1.summary()
    cosine = compare_models(ref, cand, metric="cosine", batch_sizes=(16,))
    assert cosine.ok and cosine.outputs[0].score is not None and cosine.outputs[0].score > 0.9999
    assert not compare_models(ref, cand, metric="cosine", min_cosine=1.0, batch_sizes=(16,)).ok

    swapped = onnx.ModelProto()
    swapped.CopyFrom(ref)
    fc = next(t for t in swapped.graph.initializer if t.name == "fc")
    fc.CopyFrom(onnx.numpy_helper.from_array(logits[::-1].copy(), "fc"))  # classes permuted
    result = compare_models(ref, swapped, metric="top1", batch_sizes=(16,))
    assert not result.ok and result.outputs[0].score is not None and result.outputs[0].score < 0.5
    assert compare_models(ref, swapped, metric="topk:10", batch_sizes=(4,)).ok  # every class is in the top 10


def test_metric_scores() -> None:
    ref = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert Metric.parse("top1").score(ref, ref[:, [1, 0, 2]]) == 0.0
    assert Metric.parse("topk:2").score(ref, np.array([[0.2, 0.8, 0.0], [0.4, 0.1, 0.35]])) == 1.0
    assert Metric.parse("cosine").score(ref, -ref) == pytest.approx(-1.0)
    assert Metric.parse("cosine").score(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0
    for bad in ("top0", "topk:x", "mse"):
        with pytest.raises(InputSpecError):
            Metric.parse(bad)
    with pytest.raises(InputSpecError, match="more classes"):
        Metric.parse("topk:4").score(ref, ref)


def test_bad_metric_is_a_usage_error(tmp_path: Path, rng: np.random.Generator) -> None:
    onnx.save(conv_bn(rng), tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--metric", "mse"])
    assert result.exit_code == 2 and "top1" in result.stderr


def cancelling(a: float, b: float) -> onnx.ModelProto:
    """y = x * a - x * b: float32 rounding of the two products is large next to y."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 64] x) => (float[N, 64] y) {{
        sa = Constant <value = float {{{a}}}> ()
        sb = Constant <value = float {{{b}}}> ()
        p = Mul (x, sa)
        q = Mul (x, sb)
        y = Sub (p, q)
    }}
    """)


def test_noise_floor_accepts_an_error_of_the_models_own_size() -> None:
    ref = cancelling(1000.0, 999.9)
    cand = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 64] x) => (float[N, 64] y) {
        s = Constant <value = float {0.1}> ()
        y = Mul (x, s)
    }
    """)
    strict = compare_models(ref, cand, batch_sizes=(8,))
    assert not strict.ok and strict.noise is None
    judged = compare_models(ref, cand, batch_sizes=(8,), noise=True)
    assert judged.ok and judged.noise is not None and not judged.noise.unstable
    (out,) = judged.outputs
    assert out.noise_floor is not None and out.max_rel > out.rtol and out.max_rel <= 10 * out.noise_floor
    assert "noise floor" in judged.summary()


def argmax_lookup(table: np.ndarray) -> onnx.ModelProto:
    """y = table[argmax(x)]: a tie in x flips under a one-ulp change."""
    return parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[1, 4] x) => (float[1, 3] y) {
        i = ArgMax <axis = 1, keepdims = 0> (x)
        y = Gather (table, i)
    }
    """, {"table": table})


def test_an_unstable_reference_is_said_to_be_unstable(tmp_path: Path) -> None:
    table = np.array([[1, 2, 3], [9, 8, 7], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    ref, cand = argmax_lookup(table), argmax_lookup(table * 1.01)
    ties = [{"x": np.array([[1.0, 1.0, 0.0, 0.0]], dtype=np.float32)} for _ in range(8)]
    result = compare_models(ref, cand, inputs=ties, noise=True, seed=3)
    assert not result.ok and result.noise is not None and result.noise.unstable
    assert "unstable" in result.noise.sentence()


def test_a_static_batch_says_which_batch_sizes_ran(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn(rng, outputs="float[1, 6, 8, 8] y")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    result = compare_models(model, foldnorm.fold_model(model).model, batch_sizes=(1, 2))
    assert result.batch_sizes == [1] and result.requested_batch_sizes == [1, 2]
    assert "over batch sizes [1] (the model's batch axis is static; [1, 2] asked)" in result.summary()


def test_unnamed_shape_on_a_one_input_model(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=("H", "W"))
    onnx.save(model, tmp_path / "m.onnx")
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--shape",
                                      "1x4x5x7", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"][0]["total"] == (1 + 2) * 6 * 5 * 7


@pytest.mark.slow  # exports a built-in model twice with torch
def test_fp32_against_fp16_of_a_built_in_model(tmp_path: Path) -> None:
    import torch
    from foldnorm.models import get_spec

    spec = get_spec("resnet-bn")
    module = spec.build()
    example = [torch.randn(spec.input_shapes[0], generator=torch.Generator().manual_seed(0))]
    fp32 = foldnorm.export_onnx(module, example, tmp_path / "fp32.onnx", exporter="legacy")
    fp16 = foldnorm.export_onnx(module, example, tmp_path / "fp16.onnx", exporter="legacy", dtype="float16")
    assert fp32.ok and fp16.dtype == "float16"
    folded = tmp_path / "fp16-folded.onnx"
    foldnorm.fold_file(fp16.path, folded)
    result = compare_models(fp32.path, folded, batch_sizes=(1, 4))
    assert result.ok, result.details()
    (out,) = result.outputs
    assert out.dtype == "float16" and 0 < out.max_rel < 1e-2
    assert compare_models(fp32.path, folded, batch_sizes=(4,), metric="cosine").outputs[0].score > 0.999
