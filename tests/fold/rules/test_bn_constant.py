"""bn-constant: a BatchNormalization of a constant input (weight standardisation, as torch's legacy and dynamo
exporters write BiT's StdConv2d) is evaluated in float64 and replaced by an initializer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import parse, x_feed
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off, checked_fold, count_ops

from foldnorm import FoldOptions
from foldnorm.onnxgraph.constants import ElementBudget


def std_conv(rng: np.random.Generator, exporter: str, *, dtype: str = "float", after: str = "", std: str = "n",
             outputs: str = "") -> onnx.ModelProto:
    """x -> Conv whose weight W [6, 4, 3, 3] is standardised per output channel by a BN `n` over
    `W.reshape(1, 6, -1)`, then reshaped back from `std` (ONNX text `after` may compute it from `n`).

    `exporter="legacy"`: a training-mode BN (its statistics are W's own; the mean/var inputs only feed the running
    statistics outputs `rm`, `rv`); `"dynamo"`: an inference BN whose mean and variance are ReduceMeans of the
    reshaped W. `outputs` adds graph outputs.
    """
    np_dtype = np.float16 if dtype == "float16" else np.float32
    inits = {"W": rng.normal(0.3, 0.5, (6, 4, 3, 3)).astype(np_dtype), "flat": np.array([1, 6, -1], np.int64),
             "shape": np.array([6, 4, 3, 3], np.int64), "axes": np.array([0, 2], np.int64),
             "gamma": rng.uniform(0.5, 1.5, 6).astype(np.float32), "beta": rng.normal(0, 0.3, 6).astype(np.float32),
             "old_mean": rng.normal(0, 1, 6).astype(np.float32), "old_var": rng.uniform(0.5, 2, 6).astype(np.float32)}
    if exporter == "legacy":
        bn = "n, rm, rv = BatchNormalization <epsilon = 1e-8, training_mode = 1> (r, gamma, beta, old_mean, old_var)"
    else:
        bn = """m = ReduceMean <keepdims = 0> (r, axes)
        mk = ReduceMean <keepdims = 1> (r, axes)
        d = Sub (r, mk)
        sq = Mul (d, d)
        v = ReduceMean <keepdims = 0> (sq, axes)
        n = BatchNormalization <epsilon = 1e-8> (r, gamma, beta, m, v)"""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({dtype}[N, 4, 6, 6] x) => ({dtype}[N, 6, 4, 4] y{outputs}) {{
        r = Reshape (W, flat)
        {bn}
        {after}
        ws = Reshape ({std}, shape)
        y = Conv (x, ws)
    }}
    """, inits)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_weight_standardisation_becomes_the_conv_weight(rng: np.random.Generator, exporter: str) -> None:
    result = assert_folds(std_conv(rng, exporter), x_feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Reshape", "Conv"], "the statistics' nodes are gone"
    assert count_ops(result.model.graph, "ReduceMean") == 0
    (record,) = result.report.records
    assert record.outcome == "folded" and "a constant (its input is one" in record.reason


def test_the_standardised_weight_is_computed_in_float64(rng: np.random.Generator) -> None:
    model = std_conv(rng, "legacy")
    (value,) = [onnx.numpy_helper.to_array(t) for t in checked_fold(model).model.graph.initializer
                if t.name.endswith(".value")]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    w = inits["W"].astype(np.float64).reshape(1, 6, -1)
    mean, var = w.mean(axis=(0, 2), keepdims=True), w.var(axis=(0, 2), keepdims=True)
    gamma, beta = (inits[k].astype(np.float64).reshape(1, 6, 1) for k in ("gamma", "beta"))
    np.testing.assert_array_equal(value, ((w - mean) / np.sqrt(var + 1e-8) * gamma + beta).astype(np.float32))


def test_a_constant_read_by_several_nodes_feeds_them_all(rng: np.random.Generator) -> None:
    model = std_conv(rng, "dynamo", after="copy = Identity (n)", outputs=", float[1, 6, 36] copy")
    result = assert_folds(model, x_feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Identity", "Reshape", "Conv"]


def test_running_statistics_read_elsewhere_keep_the_training_bn(rng: np.random.Generator) -> None:
    assert_refused(std_conv(rng, "legacy", outputs=", float[6] rm"),
                   "the node also outputs running statistics (training graph)")


def test_a_value_beyond_float16_is_refused(rng: np.random.Generator) -> None:
    model = std_conv(rng, "dynamo", dtype="float16")  # BN-15: fp16 input, fp32 gamma and beta
    for tensor in model.graph.initializer:
        if tensor.name == "gamma":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.full(6, 1e5, np.float32), "gamma"))
    assert_refused(model, "its input is a constant, but evaluating it fails: a folded value", outcome="kept")


def test_an_output_beyond_the_constant_evaluators_budget_is_kept(rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # W has 216 elements: the evaluator may compute the reshaped W, not the BN's output on top of it.
    monkeypatch.setattr(ElementBudget, "for_graph", classmethod(lambda cls, graph: cls(per_value=1000, total=300)))
    result = assert_refused(std_conv(rng, "legacy"), "its input is a constant, but its output would be a value the "
                            "constant evaluator did not compute (its budget of 300 elements", outcome="kept")
    assert result.report.records[0].reason.startswith("standalone: its input comes from Reshape r")


def test_skip_bn_constant_keeps_it_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(std_conv(rng, "dynamo"), "bn-constant")


def test_a_bn_after_a_kept_training_bn_is_not_merged_into_it(rng: np.random.Generator) -> None:
    # bn-bn rewrites the first BN's parameters and keeps the node: a training-mode BN would still normalize with
    # its input's statistics, so its map is no fold target, constant input or not.
    model = std_conv(rng, "legacy", after="n2 = BatchNormalization (n, gamma, beta, old_mean, old_var)", std="n2")
    result = assert_refused(model, "training_mode=1", options=FoldOptions(skip=("bn-constant",)))
    assert [r.outcome for r in result.report.records] == ["skipped", "skipped"]
