"""Opsets below 7 (issue 13, item 10): BatchNormalization-1/6 with is_test=1 fold into Conv-1 and Gemm-1/6 (its C
broadcast by `broadcast=1`); what would need opset 7's broadcasting is refused node by node, with the reason; a
model is never refused for an old opset. ONNX Runtime has no kernels for BatchNormalization-6 or Gemm-6, so the
reference here is onnx's own evaluator."""

from __future__ import annotations

import copy
import glob
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from support.builders import assert_close, bn_inputs, bn_params, parse, x_feed
from support.fold_helpers import assert_refused, checked_fold

from foldnorm import FoldOptions, fold_model

BACKEND_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def ir3(text: str, initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    """An IR-3 model, as torch's old converter wrote them: every initializer also listed as a graph input."""
    model = parse(text, initializers, check=False)
    model.graph.input.extend(onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                v.shape) for k, v in initializers.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs by onnx's evaluator (which knows BatchNormalization-6, not -1: that is read as -6, the same
    inference without consumed_inputs)."""
    model = copy.deepcopy(model)
    if model.opset_import[0].version < 6:
        model.opset_import[0].version = 6
        for node in model.graph.node:
            kept = [a for a in node.attribute if a.name != "consumed_inputs"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def assert_folds_old(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                     options: FoldOptions | None = None) -> onnx.ModelProto:
    result = checked_fold(model, options)
    assert [r.outcome for r in result.report.records] == ["folded"], result.report.to_json()
    assert all(n.op_type != "BatchNormalization" for n in result.model.graph.node)
    assert_close(reference(model, feeds), reference(result.model, feeds))
    return result.model


@pytest.mark.parametrize("opset", [5, 6])
def test_conv1_then_batchnorm_folds(rng: np.random.Generator, opset: int) -> None:
    # BatchNormalization-1 (opsets 1-5) requires consumed_inputs, which plays no part in inference.
    consumed = ", consumed_inputs = [0, 0, 0, 1, 1]" if opset < 6 else ""
    model = ir3(f"""
    <ir_version: 3, opset_import: ["" : {opset}]>
    g (float[2, 4, 6, 6] x) => (float[2, 6, 6, 6] y) {{
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization <is_test = 1, epsilon = 0.001{consumed}> (c, {bn_inputs("bn")})
    }}
    """, {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)})
    folded = assert_folds_old(model, x_feed(rng))
    assert [n.op_type for n in folded.graph.node] == ["Constant", "Conv"], "IR 3: the new bias is a Constant"


@pytest.mark.parametrize("c", ["bias", "no bias (beta = 0)"])
def test_gemm6_then_batchnorm_folds_and_broadcasts_its_new_c(rng: np.random.Generator, c: str) -> None:
    beta = 1.0 if c == "bias" else 0.0
    model = ir3(f"""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[3, 5] x) => (float[3, 4] y) {{
        h = Gemm <transB = 1, broadcast = 1, beta = {beta}> (x, B, C)
        y = BatchNormalization <is_test = 1> (h, {bn_inputs("bn")})
    }}
    """, {"B": rng.normal(0, 0.5, (4, 5)).astype(np.float32), "C": rng.normal(0, 0.5, 4).astype(np.float32),
          **bn_params("bn", 4, rng)})
    folded = assert_folds_old(model, {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)})
    (gemm,) = folded.graph.node
    assert {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}["broadcast"] == 1


def test_a_fold_that_needs_a_new_broadcasting_add_is_refused(rng: np.random.Generator) -> None:
    model = ir3(f"""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[3, 5] x) => (float[3, 4] y) {{
        h = MatMul (x, W)
        y = BatchNormalization <is_test = 1> (h, {bn_inputs("bn")})
    }}
    """, {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), **bn_params("bn", 4, rng)})
    assert_refused(model, "opset 6: a bias Add after MatMul h would need the broadcasting of opset 7 and later")


def test_a_standalone_bn_is_not_lowered_to_mul_add(rng: np.random.Generator) -> None:
    model = ir3(f"""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2, 4, 6, 6] x) => (float[2, 4, 6, 6] y) {{
        r = Relu (x)
        y = BatchNormalization <is_test = 1> (r, {bn_inputs("bn")})
    }}
    """, bn_params("bn", 4, rng))
    assert_refused(model, "opset 6: Mul and Add by [C, 1, ...] constants would need the broadcasting of opset 7",
                   outcome="kept", options=FoldOptions(standalone_bn="affine"))


def test_a_mul_broadcast_by_axis_is_refused_not_misread(rng: np.random.Generator) -> None:
    # Mul-6 <broadcast = 1, axis = 1> by a [6] constant scales the channels; numpy's rules would read the last axis.
    model = ir3("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2, 4, 6, 6] x) => (float[2, 6, 6, 6] y) {
        c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, W)
        y = Mul <broadcast = 1, axis = 1> (c, s)
    }
    """, {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "s": rng.uniform(0.5, 2, 6).astype(np.float32)})
    assert_refused(model, "it broadcasts by its broadcast/axis attributes (Mul of opset 6), not by numpy's rules")


def backend_models() -> list[Path]:
    """ONNX's opset-6 test models with a BatchNormalization, Conv or Gemm (torch's old converter's output)."""
    found = []
    for path in sorted(glob.glob(str(BACKEND_DATA / "pytorch-*" / "*" / "model.onnx"))):
        model = onnx.load(path)
        if model.opset_import[0].version < 7 and any(n.op_type in ("BatchNormalization", "Conv", "Gemm")
                                                     for n in model.graph.node):
            found.append(Path(path))
    return found


@pytest.mark.parametrize("path", backend_models(), ids=lambda p: p.parent.name)
def test_onnx_opset6_test_models_are_read_and_compute_their_outputs(path: Path) -> None:
    model = onnx.load(str(path))
    result = fold_model(path)
    assert all(r.outcome != "folded" or r.kind == "batchnorm" for r in result.report.records)
    for data in sorted(path.parent.glob("test_data_set_*")):
        inputs = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("input_*.pb"))]
        expected = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("output_*.pb"))]
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        assert_close(expected, reference(result.model, dict(zip(names, inputs, strict=True))))


def test_cli_fold_of_an_opset6_model_onnx_runtime_cannot_run_says_how(tmp_path: Path) -> None:
    src = BACKEND_DATA / "pytorch-converted" / "test_Linear" / "model.onnx"  # Gemm-6: no ONNX Runtime kernel
    out = tmp_path / "o.onnx"
    verified = CliRunner().invoke(cli, ["fold", str(src), "-o", str(out)])
    assert verified.exit_code == 1 and not out.exists()
    assert "has no kernel for Gemm-6" in verified.stderr and "fold --no-verify skips" in verified.stderr
    unverified = CliRunner().invoke(cli, ["fold", str(src), "-o", str(out), "--no-verify"])
    assert unverified.exit_code == 0, unverified.output
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
