"""reshape-bn: a BatchNormalization over a rank-2 Flatten/Reshape of a MatMul/Gemm output (LeViT's
`bn(linear(x).flatten(0, 1)).reshape_as(...)`), folded into the linear op; the cases that cannot be proved."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off

from foldnorm import FoldOptions


def levit_model(rng: np.random.Generator, *, bias: bool = False, flatten: str = "Flatten <axis = 2> (h)",
                cols: int = 4, channels: int = 4, tokens: int = 7, rows: tuple[int, ...] = (-1, 4)) -> onnx.ModelProto:
    """x [N, tokens, 5] -> MatMul [5, cols] (+ bias) -> `flatten` (to f) -> BN(channels) -> Reshape back, as the
    legacy exporter writes LeViT's Linear + BatchNorm1d (a Shape of the MatMul output gives the shape back).
    Reshape -> BN -> Reshape is no tracked InstanceNorm: nothing is tiled per sample (issue 13, item 2)."""
    inits = {"W": rng.normal(0, 0.5, (5, cols)).astype(np.float32), "b": rng.normal(0, 0.5, cols).astype(np.float32),
             "rows": np.array(rows, np.int64), **bn_params("bn", channels, rng)}
    linear = "m = MatMul (x, W)\n        h = Add (m, b)" if bias else "h = MatMul (x, W)"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {tokens}, 5] x) => (float[N, {tokens}, {cols}] y) {{
        {linear}
        s = Shape (h)
        f = {flatten}
        n = BatchNormalization (f, {bn_inputs("bn")})
        y = Reshape (n, s)
    }}
    """, inits if bias else {k: v for k, v in inits.items() if k != "b"})


def x_tokens(rng: np.random.Generator, tokens: int = 7) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0, 1, (2, tokens, 5)).astype(np.float32)}


def test_legacy_levit_linear_flatten_bn_folds_into_the_matmul_with_a_new_bias(rng: np.random.Generator) -> None:
    result = assert_folds(levit_model(rng), x_tokens(rng))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Add") == 1 and "BatchNormalization" not in ops
    assert "folded through Flatten" in result.report.records[0].reason


@pytest.mark.parametrize("flatten", ["Flatten <axis = 2> (h)", "Flatten <axis = -1> (h)", "Reshape (h, rows)"])
def test_matmul_bias_reshaped_to_rank_2_folds_into_matmul_and_bias(rng: np.random.Generator, flatten: str) -> None:
    result = assert_folds(levit_model(rng, bias=True, flatten=flatten), x_tokens(rng))
    assert result.report.records[0].target == "h" and "into Add h" in result.report.records[0].reason
    assert sum(n.op_type == "Add" for n in result.model.graph.node) == 1


def test_a_flatten_that_merges_ones_into_the_columns_folds(rng: np.random.Generator) -> None:
    # [N, 1, 4] flattened from axis 1 is [N, 4]: the BN's 4 channels are still the MatMul's 4 columns.
    assert_folds(levit_model(rng, flatten="Flatten <axis = 1> (h)", tokens=1), x_tokens(rng, tokens=1))


def test_dynamo_reshape_to_a_run_time_shape_of_recorded_rank_2_folds(rng: np.random.Generator) -> None:
    # torch.export's view(-1, C): the target is Concat(batch * tokens, [C]), known only at run time; the
    # output's recorded shape proves rank 2 (dynamo records every value). The view back makes it Reshape -> BN ->
    # Reshape, which is no tracked InstanceNorm (issue 13, item 2).
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "tok": np.array([7], np.int64),
             "cols": np.array([4], np.int64), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 7, 5] x) => (float[N, 7, 4] y) <float[M, 4] f> {{
        m = MatMul (x, W)
        n = Shape <end = 1> (x)
        rows = Mul (n, tok)
        target = Concat <axis = 0> (rows, cols)
        f = Reshape <allowzero = 1> (m, target)
        b = BatchNormalization (f, {bn_inputs("bn")})
        s = Shape (m)
        y = Reshape (b, s)
    }}
    """, inits)
    assert_folds(model, x_tokens(rng))


def test_gemm_then_flatten_folds_into_the_gemm(rng: np.random.Generator) -> None:
    inits = {"B": rng.normal(0, 0.5, (4, 5)).astype(np.float32), "C": rng.normal(0, 0.5, 4).astype(np.float32),
             **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 4] y) {{
        m = Gemm <transB = 1, alpha = 0.5> (x, B, C)
        f = Flatten (m)
        y = BatchNormalization (f, {bn_inputs("bn")})
    }}
    """, inits)
    result = assert_folds(model, {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)})
    assert [n.op_type for n in result.model.graph.node] == ["Gemm", "Flatten"]


def test_reshape_to_rank_3_is_refused(rng: np.random.Generator) -> None:
    assert_refused(levit_model(rng, flatten="Reshape (h, rows)", rows=(-1, 4, 1)), "gives rank 3, not 2")


def test_reshape_to_an_unprovable_rank_is_refused(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 7, 5] x, int64[K] target) => (float[M, 4] y) {{
        m = MatMul (x, W)
        f = Reshape (m, target)
        b = BatchNormalization (f, {bn_inputs("bn")})
        y = Relu (b)
    }}
    """, inits)
    assert_refused(model, "reshapes to a run-time shape whose rank cannot be proved")


def test_bn_channels_that_are_not_the_matmul_columns_are_refused(rng: np.random.Generator) -> None:
    # [N, 7, 8] viewed as [-1, 4]: BN channel c covers columns c and c + 4, not one column.
    assert_refused(levit_model(rng, cols=8, flatten="Reshape (h, rows)", bias=True),
                   "it has 4 channels but the producer has 8 output channels")


def test_flatten_over_several_axes_is_refused(rng: np.random.Generator) -> None:
    # [N, 7, 4] flattened from axis 1 is [N, 28]: a BN with 28 channels does not act per MatMul column.
    assert_refused(levit_model(rng, flatten="Flatten <axis = 1> (h)", channels=28),
                   "it has 28 channels but the producer has 4 output channels")


def test_a_matmul_output_read_elsewhere_is_refused(rng: np.random.Generator) -> None:
    model = levit_model(rng, bias=True)
    model.graph.output.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, ["N", 7, 4]))
    assert_refused(model, "the output of Add h is also read elsewhere")


def test_a_flatten_of_a_non_linear_op_is_kept_as_before(rng: np.random.Generator) -> None:
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 7, 4] x) => (float[M, 4] y) {{
        h = Relu (x)
        f = Flatten <axis = 2> (h)
        y = BatchNormalization (f, {bn_inputs("bn")})
    }}
    """, bn_params("bn", 4, rng))
    assert_refused(model, "its input comes from Flatten f, which is not linear", outcome="kept")


def test_skip_reshape_bn_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(levit_model(rng, bias=True), "reshape-bn")


def test_skip_of_the_rule_behind_the_reshape_is_honoured(rng: np.random.Generator) -> None:
    assert_refused(levit_model(rng, bias=True), "rule matmul-bn is turned off (--skip matmul-bn)",
                   options=FoldOptions(skip=("matmul-bn",)))
