"""GroupNorm (opset 18 and 21, and lowered), LayerNorm, InstanceNorm and Reshape-BN-Reshape stay intact."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from support.builders import assert_close, bn_inputs, bn_params, conv_bn, parse, run_ort

from foldnorm import fold_model


def affine(rng: np.random.Generator, n: int, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}_s": rng.normal(1, 0.3, n).astype(np.float32),
            f"{prefix}_b": rng.normal(0, 0.3, n).astype(np.float32)}


def assert_intact(model: onnx.ModelProto, feeds: dict[str, np.ndarray], kinds: set[tuple[str, str]],
                  check: bool = True) -> None:
    result = fold_model(model)
    assert {(r.kind, r.outcome) for r in result.report.records} == kinds
    after = {n.output[0]: n for n in result.model.graph.node}
    inits = {t.name: t for t in result.model.graph.initializer}
    before_inits = {t.name: t for t in model.graph.initializer}
    kept = {r.node for r in result.report.records if r.outcome == "kept"}
    for node in model.graph.node:
        if node.output[0] in kept or node.op_type == "Reshape":
            assert after[node.output[0]] == node
            for name in node.input:
                if name in before_inits:
                    assert inits[name] == before_inits[name]
    if check:
        onnx.checker.check_model(result.model, full_check=True)
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_is_kept(rng: np.random.Generator, opset: int) -> None:
    n = 4 if opset >= 21 else 2  # opset 18 takes per-group scale/bias, 21 per-channel
    # GroupNormalization-18 is deprecated, so the checker refuses opset-18 models that use it; ORT runs them.
    model = conv_bn(rng, cout=4, spatial=(6, 6), bn_out="b", inits=affine(rng, n, "gn"), opset=opset,
                    ir_version=10 if opset >= 21 else 8, check=opset >= 21,
                    tail=["y = GroupNormalization <num_groups = 2, epsilon = 0.001> (b, gn_s, gn_b)"])
    x = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)}
    assert_intact(model, x, {("batchnorm", "folded"), ("groupnorm", "kept")}, check=opset >= 21)


def test_lowered_group_norm_is_kept(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "shape": np.array([0, 2, -1], np.int64),
             "back": np.array([0, 4, 6, 6], np.int64), "ones": np.ones(2, np.float32),
             "zeros": np.zeros(2, np.float32), "gs": rng.normal(1, 0.3, (4, 1, 1)).astype(np.float32),
             "gb": rng.normal(0, 0.3, (4, 1, 1)).astype(np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        r = Reshape (c, shape)
        i = InstanceNormalization (r, ones, zeros)
        u = Reshape (i, back)
        m = Mul (u, gs)
        y = Add (m, gb)
    }
    """, inits)
    x = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)}
    result = fold_model(model)
    assert [(r.kind, r.outcome) for r in result.report.records] == [("groupnorm", "kept")]
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    assert_close(run_ort(model, x), run_ort(result.model, x))


@pytest.mark.parametrize("after", ["conv", "batchnorm"])
def test_no_rule_folds_a_lowered_group_norms_affine_into_what_follows(rng: np.random.Generator, after: str) -> None:
    """timm's PoolFormerV2 and MobileViTv2 (legacy export): GroupNorm(1 group) lowered to Reshape ->
    InstanceNormalization -> Reshape -> Mul -> Add, then a 1x1 Conv (affine-conv would fold the Mul/Add into it)
    or a BatchNormalization (which would fold into the Add). The GroupNorm is kept whole; the fold used to stop
    with InvariantViolation."""
    inits = {"shape": np.array([0, 1, -1], np.int64), "back": np.array([0, 4, 6, 6], np.int64),
             "one": np.ones(1, np.float32), "zero": np.zeros(1, np.float32),
             "gs": rng.normal(1, 0.3, (4, 1, 1)).astype(np.float32),
             "gb": rng.normal(0, 0.3, (4, 1, 1)).astype(np.float32),
             "W": rng.normal(0, 0.5, (5, 4, 1, 1)).astype(np.float32),
             **bn_params("bn", 4 if after == "batchnorm" else 5, rng)}
    tail = (f"y = BatchNormalization <epsilon = 0.001> (a, {bn_inputs('bn')})" if after == "batchnorm" else
            f"c = Conv (a, W)\n        y = BatchNormalization <epsilon = 0.001> (c, {bn_inputs('bn')})")
    channels = 4 if after == "batchnorm" else 5
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 6, 6] x) => (float[N, {channels}, 6, 6] y) {{
        r = Reshape (x, shape)
        i = InstanceNormalization (r, one, zero)
        u = Reshape (i, back)
        m = Mul (u, gs)
        a = Add (m, gb)
        {tail}
    }}
    """, inits)
    result = fold_model(model)
    records = {(r.kind, r.outcome) for r in result.report.records}
    assert ("groupnorm", "kept") in records
    kept = {n.output[0]: n for n in model.graph.node if n.output[0] in "riuma"}
    after_nodes = {n.output[0]: n for n in result.model.graph.node}
    assert all(after_nodes[name] == node for name, node in kept.items())
    bn = next(r for r in result.report.records if r.kind == "batchnorm")
    if after == "conv":
        assert bn.outcome == "folded"
    else:
        assert bn.outcome == "kept" and "part of InstanceNormalization" in bn.reason, bn.reason
    x = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)}
    assert_close(run_ort(model, x), run_ort(result.model, x))


def test_layer_and_instance_norm_are_kept(rng: np.random.Generator) -> None:
    tail = ["i = InstanceNormalization (b, in_s, in_b)", "y = LayerNormalization <axis = -1> (i, ln_s, ln_b)"]
    model = conv_bn(rng, spatial=(6, 6), bn_out="b", inits={**affine(rng, 6, "in"), **affine(rng, 6, "ln")}, tail=tail)
    x = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)}
    assert_intact(model, x, {("batchnorm", "folded"), ("instancenorm", "kept"), ("layernorm", "kept")})


@pytest.mark.parametrize("tiled", ["Tile nodes", "constant-folded"])
def test_reshape_bn_reshape_instance_norm_is_kept(rng: np.random.Generator, tiled: str) -> None:
    # InstanceNorm2d(track_running_stats=True) as exported: [N, C, H, W] -> [1, N*C, H*W] -> BN with the C
    # statistics tiled N times -> back. The legacy exporter's constant folding leaves the tiled values.
    stats = bn_params("bn", 4, rng)
    inits = {"W": rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "fwd": np.array([1, 8, 36], np.int64),
             "back": np.array([2, 4, 6, 6], np.int64), "reps": np.array([2], np.int64)}
    if tiled == "Tile nodes":
        inits.update(stats)
        tiles = "\n".join(f"t_{k} = Tile (bn_{k}, reps)" for k in ("scale", "bias", "mean", "var"))
        params = "t_scale, t_bias, t_mean, t_var"
    else:
        inits.update({name: np.tile(value, 2) for name, value in stats.items()})
        tiles, params = "", bn_inputs("bn")
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 4, 6, 6] x) => (float[2, 4, 6, 6] y) <float[2, 4, 6, 6] c> {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        r = Reshape (c, fwd)
        {tiles}
        b = BatchNormalization (r, {params})
        y = Reshape (b, back)
    }}
    """, inits)
    x = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)}
    assert_intact(model, x, {("instancenorm", "kept")})
    record = fold_model(model).report.records[0]
    assert "InstanceNorm with running statistics" in record.reason


@pytest.mark.parametrize("case", ["stats not tiled", "leading dim not 1"])
def test_reshape_bn_reshape_without_the_instance_norm_pattern_is_a_batchnorm(rng: np.random.Generator,
                                                                           case: str) -> None:
    # A BN between Reshapes is an InstanceNorm only when the graph proves torch's pattern; else it is a BatchNorm
    # the rules are offered (here none folds it: a rank-3 view, or statistics computed at run time).
    channels, fwd, reps = (8, [1, 8, 36], "") if case == "stats not tiled" else (4, [2, 4, 36], "t_mean, t_var")
    inits = {"W": rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "fwd": np.array(fwd, np.int64),
             "back": np.array([2, 4, 6, 6], np.int64), "one": np.array([1], np.int64),
             **bn_params("bn", channels, rng)}
    params = f"bn_scale, bn_bias, {reps}" if reps else bn_inputs("bn")
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 4, 6, 6] x) => (float[2, 4, 6, 6] y) <float[2, 4, 6, 6] c> {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        r = Reshape (c, fwd)
        t_mean = Tile (bn_mean, one)
        t_var = Tile (bn_var, one)
        b = BatchNormalization (r, {params})
        y = Reshape (b, back)
    }}
    """, inits)
    [record] = fold_model(model).report.records
    assert (record.kind, record.outcome) == ("batchnorm", "skipped"), record
    assert ("rank 3, not 2" if case == "stats not tiled" else "'t_mean' is computed at run time") in record.reason


def _conv_then_bn(rng: np.random.Generator, stats: str, inputs: str = "") -> onnx.ModelProto:
    """Conv -> BN whose mean and variance `bn_mean`, `bn_var` are computed by the nodes `stats` (ONNX text)."""
    params = bn_params("bn", 6, rng)
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "axes": np.array([0, 2, 3], np.int64),
             "bn_scale": params["bn_scale"], "bn_bias": params["bn_bias"]}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x{inputs}) => (float[N, 6, 6, 6] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        {stats}
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)


def test_bn_with_statistics_computed_from_its_input_is_kept(rng: np.random.Generator) -> None:
    # BatchNorm2d(track_running_stats=False) under dynamo: mean and variance are ReduceMeans of the BN's input.
    model = _conv_then_bn(rng, """bn_mean = ReduceMean <keepdims = 0> (c, axes)
        m = ReduceMean <keepdims = 1> (c, axes)
        d = Sub (c, m)
        sq = Mul (d, d)
        bn_var = ReduceMean <keepdims = 0> (sq, axes)""")
    [record] = fold_model(model).report.records
    assert (record.kind, record.outcome) == ("batchnorm", "kept")
    assert "computed from its input" in record.reason


def test_bn_with_statistics_from_elsewhere_is_an_ordinary_batchnorm(rng: np.random.Generator) -> None:
    # Statistics that do not come from the BN's input are no "BatchNorm without running statistics": the BN is
    # offered to the rules, which say why they cannot fold it (here: they are filled at run time).
    model = _conv_then_bn(rng, """bn_mean = ConstantOfShape <value = float[1] {0.25}> (n)
        bn_var = ConstantOfShape <value = float[1] {1.5}> (n)""", inputs=", int64[1] n")
    [record] = fold_model(model).report.records
    assert (record.kind, record.outcome) == ("batchnorm", "skipped")
    assert "its mean 'bn_mean' is computed at run time" in record.reason
