"""Conv + BatchNormalization: positive cases and the never-fold matrix."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import assert_close, bn_inputs, bn_params, op_count, parse, run_ort

from foldnorm import fold_model
from foldnorm.errors import InvalidModelError


def conv_bn_model(rng: np.random.Generator, *, group: int = 1, bias: bool = True, cin: int = 4, cout: int = 6,
                  extra: str = "", outputs: str = "float[N, 6, 8, 8] y") -> onnx.ModelProto:
    inits = {"W": rng.normal(0, 0.5, (cout, cin // group, 3, 3)).astype(np.float32), **bn_params("bn", cout, rng)}
    conv_inputs = "x, W"
    if bias:
        inits["B"] = rng.normal(0, 0.5, cout).astype(np.float32)
        conv_inputs += ", B"
    text = f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {cin}, 8, 8] x) => ({outputs}) {{
        c = Conv <group = {group}, pads = [1, 1, 1, 1]> ({conv_inputs})
        y = BatchNormalization <epsilon = 0.001> (c, {bn_inputs("bn")})
        {extra}
    }}
    """
    return parse(text, inits)


def feeds(rng: np.random.Generator, cin: int = 4) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0, 1, (2, cin, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize(("group", "bias"), [(1, True), (1, False), (2, True), (4, False)])
def test_conv_bn_folds(rng: np.random.Generator, group: int, bias: bool) -> None:
    cin, cout = (4, 8) if group == 4 else (4, 6)
    model = conv_bn_model(rng, group=group, bias=bias, cin=cin, cout=cout,
                          outputs=f"float[N, {cout}, 8, 8] y")
    x = feeds(rng, cin)
    expected = run_ort(model, x)
    result = fold_model(model)
    folded = result.model
    assert op_count(folded, "BatchNormalization") == 0
    assert op_count(model, "BatchNormalization") == 1, "the input model must not be modified"
    onnx.checker.check_model(folded, full_check=True)
    assert [o.name for o in folded.graph.output] == ["y"]
    assert_close(expected, run_ort(folded, x))
    (record,) = result.report.records
    assert (record.outcome, record.kind, record.op_type) == ("folded", "batchnorm", "BatchNormalization")
    assert record.target is not None


def test_fold_twice_changes_nothing(rng: np.random.Generator) -> None:
    once = fold_model(conv_bn_model(rng)).model
    twice = fold_model(once)
    assert twice.model.SerializeToString() == once.SerializeToString()
    assert twice.report.records == []


def test_conv_output_read_twice_is_skipped(rng: np.random.Generator) -> None:
    model = conv_bn_model(rng, extra="z = Relu (c)", outputs="float[N, 6, 8, 8] y, float[N, 6, 8, 8] z")
    result = fold_model(model)
    assert op_count(result.model, "BatchNormalization") == 1
    (record,) = result.report.records
    assert record.outcome == "skipped"
    assert "also read by 1 other node" in record.reason


def test_relu_between_is_not_folded(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        r = Relu (c)
        y = BatchNormalization (r, {bn_inputs("bn")})
    }}
    """, inits)
    result = fold_model(model)
    assert op_count(result.model, "BatchNormalization") == 1
    (record,) = result.report.records
    assert record.outcome == "kept"
    assert "Relu" in record.reason


def test_training_mode_is_skipped(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y, rm, rv = BatchNormalization <training_mode = 1> (c, {bn_inputs("bn")})
    }}
    """, inits)
    result = fold_model(model)
    assert op_count(result.model, "BatchNormalization") == 1
    assert "training_mode=1" in result.report.records[0].reason


def test_params_as_graph_input_are_skipped(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)}
    del inits["bn_scale"]
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 8, 8] x, float[6] bn_scale) => (float[N, 6, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)
    result = fold_model(model)
    assert op_count(result.model, "BatchNormalization") == 1
    assert "graph input" in result.report.records[0].reason


def test_bn_param_length_mismatch_is_a_user_error(rng: np.random.Generator) -> None:
    model = conv_bn_model(rng)
    for t in model.graph.initializer:
        if t.name == "bn_scale":
            t.CopyFrom(onnx.numpy_helper.from_array(np.ones(5, np.float32), "bn_scale"))
    with pytest.raises(InvalidModelError, match="different lengths"):
        fold_model(model)


def test_protected_norms_are_kept_intact(rng: np.random.Generator) -> None:
    inits = {
        "W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
        "ln_s": rng.normal(1, 0.3, 8).astype(np.float32),
        "ln_b": rng.normal(0, 0.3, 8).astype(np.float32),
        "in_s": rng.normal(1, 0.3, 6).astype(np.float32),
        "in_b": rng.normal(0, 0.3, 6).astype(np.float32),
        **bn_params("bn", 6, rng),
    }
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        b = BatchNormalization (c, {bn_inputs("bn")})
        i = InstanceNormalization (b, in_s, in_b)
        y = LayerNormalization <axis = -1> (i, ln_s, ln_b)
    }}
    """, inits)
    x = feeds(rng)
    result = fold_model(model)
    kinds = {(r.kind, r.outcome) for r in result.report.records}
    assert kinds == {("batchnorm", "folded"), ("instancenorm", "kept"), ("layernorm", "kept")}
    before = {n.op_type: n for n in model.graph.node}
    after = {n.op_type: n for n in result.model.graph.node}
    for op in ("InstanceNormalization", "LayerNormalization"):
        assert after[op] == before[op]
    assert_close(run_ort(model, x), run_ort(result.model, x))
