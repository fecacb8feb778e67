"""The engine: where parameters come from and where BNs live (routed constants, shared weights, subgraphs,
functions), the refusals no single rule owns (fan-out, training mode, BN parameters, nothing linear before),
its post-condition, and what the fold must preserve (names, metadata, external data, idempotence)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import assert_close, bn_inputs, bn_params, conv_bn, op_count, parse, run_ort, x_feed
from support.fold_helpers import assert_folds, assert_refused, checked_fold

from foldnorm import FoldOptions, fold_model, load_model, save_model
from foldnorm.errors import InvalidModelError, InvariantViolation
from foldnorm.fold.context import FoldContext
from foldnorm.fold.engine import POST_CONDITIONS
from foldnorm.fold.normalizations import check_protected
from foldnorm.fold.rules import ChannelParams, Plan
from foldnorm.fold.rules.conv_bn import ConvBatchNorm
from foldnorm.onnxgraph.graph import set_attr


def test_conv_output_read_twice_is_skipped(rng: np.random.Generator) -> None:
    model = conv_bn(rng, tail=["z = Relu (c)"], outputs="float[N, 6, 8, 8] y, float[N, 6, 8, 8] z")
    result = assert_refused(model, "also read by 1 other node")
    assert len(result.report.records) == 1


def test_producer_output_that_is_a_graph_output_is_skipped(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6), outputs="float[N, 6, 6, 6] y, float[N, 6, 6, 6] c")
    assert_refused(model, "is also a graph output")


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
    result = assert_refused(model, "Relu", outcome="kept")
    assert len(result.report.records) == 1


def test_training_mode_is_skipped(rng: np.random.Generator) -> None:
    model = conv_bn(rng, bn_out="y, rm, rv", bn_attrs="<training_mode = 1>")
    result = checked_fold(model)
    assert op_count(result.model, "BatchNormalization") == 1
    assert "training_mode=1" in result.report.records[0].reason


def test_params_as_graph_input_are_skipped(rng: np.random.Generator) -> None:
    result = checked_fold(conv_bn(rng, graph_inputs="float[6] bn_scale"))
    assert op_count(result.model, "BatchNormalization") == 1
    assert "graph input" in result.report.records[0].reason


def test_zero_variance_with_zero_eps_is_skipped(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng)
    p["bn_var"][2] = 0.0
    assert_refused(conv_bn(rng, spatial=(6, 6), bn_attrs="<epsilon = 0.0>", params=p), "not finite")


def test_batchnorm7_spatial0_is_skipped(rng: np.random.Generator) -> None:
    assert_refused(conv_bn(rng, spatial=(6, 6), bn_attrs="<spatial = 0>", opset=7), "spatial=0")


def test_bn_param_length_mismatch_is_a_user_error(rng: np.random.Generator) -> None:
    model = conv_bn(rng, bias=True)
    for t in model.graph.initializer:
        if t.name == "bn_scale":
            t.CopyFrom(onnx.numpy_helper.from_array(np.ones(5, np.float32), "bn_scale"))
    with pytest.raises(InvalidModelError, match="different lengths"):
        fold_model(model)


def test_opset6_bn_without_is_test_is_refused_as_training_mode(rng: np.random.Generator) -> None:
    # BatchNormalization-6 defaults to is_test=0 (training): that node is refused, not the model (issue 13, item 10).
    model = conv_bn(rng, spatial=(6, 6))
    model.opset_import[0].version = 6
    (record,) = fold_model(model).report.records
    assert record.outcome == "skipped"
    assert record.reason == ("is_test=0 (BatchNormalization-6 and older, opset 6): the node computes batch "
                             "statistics (training mode)")


def test_a_newer_opset_than_onnx_knows_given_as_a_modelproto_is_a_user_error(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6))
    model.opset_import[0].version = 99
    with pytest.raises(InvalidModelError, match=r"opset 99 is not one this onnx .* knows \(1-\d+\)"):
        fold_model(model)


def ln_tail_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> BN -> InstanceNorm -> LayerNorm: one BN to fold, two protected norms."""
    inits = {"ln_s": rng.normal(1, 0.3, 8).astype(np.float32), "ln_b": rng.normal(0, 0.3, 8).astype(np.float32),
             "in_s": rng.normal(1, 0.3, 6).astype(np.float32), "in_b": rng.normal(0, 0.3, 6).astype(np.float32)}
    return conv_bn(rng, bn_out="b", inits=inits, tail=[
        "i = InstanceNormalization (b, in_s, in_b)", "y = LayerNormalization <axis = -1> (i, ln_s, ln_b)"])


def test_protected_norms_are_kept_intact(rng: np.random.Generator) -> None:
    model = ln_tail_model(rng)
    x = x_feed(rng, hw=8)
    result = checked_fold(model)
    kinds = {(r.kind, r.outcome) for r in result.report.records}
    assert kinds == {("batchnorm", "folded"), ("instancenorm", "kept"), ("layernorm", "kept")}
    before = {n.op_type: n for n in model.graph.node}
    after = {n.op_type: n for n in result.model.graph.node}
    for op in ("InstanceNormalization", "LayerNormalization"):
        assert after[op] == before[op]
    assert_close(run_ort(model, x), run_ort(result.model, x))


def test_a_rule_that_alters_a_protected_norm_trips_the_post_condition(rng: np.random.Generator,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A deliberately broken conv-bn that also edits the LayerNorm: the engine's declared post-condition catches it.
    assert [c.check for c in POST_CONDITIONS] == [check_protected]
    honest = ConvBatchNorm.check

    def broken(self: ConvBatchNorm, ctx: FoldContext, bn: onnx.NodeProto, conv: onnx.NodeProto,
               params: ChannelParams) -> Plan:
        plan = honest(self, ctx, bn, conv, params)
        layernorm = next(n for n in ctx.index.nodes if n.op_type == "LayerNormalization")

        def apply() -> None:
            plan.apply()
            set_attr(layernorm, "epsilon", 0.5)

        return Plan(plan.target, apply, plan.note)

    monkeypatch.setattr(ConvBatchNorm, "check", broken)
    with pytest.raises(InvariantViolation, match="protected normalization nodes were altered"):
        fold_model(ln_tail_model(rng))


def test_params_routed_through_identity_constant_and_expand(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng)
    w = rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32)
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {
        W = Identity (W0)
        zero = Constant <value = float {0.0}> ()
        shape = Shape <start = 0, end = 1> (W)
        b = Expand (zero, shape)
        s = Cast <to = 1> (bn_scale0)
        c = Conv <pads = [1, 1, 1, 1]> (x, W, b)
        y = BatchNormalization (c, s, bn_bias, bn_mean, bn_var)
    }
    """, {"W0": w, "bn_scale0": p.pop("bn_scale").astype(np.float64), **p})
    result = assert_folds(model, x_feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    assert {t.name for t in result.model.graph.initializer} == {"c.weight", "c.bias"}


def test_shared_weight_is_duplicated_never_edited(rng: np.random.Generator) -> None:
    w = rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y, float[N, 6, 6, 6] z) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization (c, {bn_inputs("a")})
        d = Conv <pads = [1, 1, 1, 1]> (x, W)
        z = BatchNormalization (d, {bn_inputs("b")})
    }}
    """, {"W": w, **bn_params("a", 6, rng), **bn_params("b", 6, rng)})
    result = assert_folds(model, x_feed(rng), folded=2)
    assert "shared with other nodes" in result.report.records[0].reason
    assert "shared" not in result.report.records[1].reason  # by then the second conv was W's only reader
    assert len({n.input[1] for n in result.model.graph.node}) == 2


def if_model(rng: np.random.Generator, outer: str = "", outer_outputs: str = "") -> onnx.ModelProto:
    """A Conv + BN in the then-branch of an If, the conv weight W in the main graph (read by both branches)."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x, bool cond) => (float[N, 6, 6, 6] y{outer_outputs}) {{
        {outer}
        y = If (cond) <
            then_branch = t () => (float[N, 6, 6, 6] ty) {{
                c = Conv <pads = [1, 1, 1, 1]> (x, W)
                ty = BatchNormalization (c, {bn_inputs("bn")})
            }},
            else_branch = e () => (float[N, 6, 6, 6] ey) {{
                ey = Conv <pads = [1, 1, 1, 1]> (x, W)
            }}
        >
    }}
    """, {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)})


def test_bn_in_if_branch_with_outer_scope_weights(rng: np.random.Generator) -> None:
    model = if_model(rng)
    x = x_feed(rng)
    for cond in (True, False):
        feeds = {**x, "cond": np.array(cond)}
        result = assert_folds(model, feeds)
    (record,) = result.report.records
    assert record.graph.startswith("main/y.then_branch")
    assert "enclosing graph" in record.reason
    outer = {t.name for t in result.model.graph.initializer}
    assert "W" in outer  # still read by the else branch, never edited


def test_bn_inside_model_local_function(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng)
    w = rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32)

    def const(name: str, array: np.ndarray) -> str:
        values = ", ".join(f"{v:.9g}" for v in array.reshape(-1))
        return f"{name} = Constant <value = float[{', '.join(map(str, array.shape))}] {{{values}}}> ()"

    body = "\n".join(const(k, v) for k, v in {"W": w, **p}.items())
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18, "local" : 1]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {{
        y = local.Block (x)
    }}
    <domain: "local", opset_import: ["" : 18]>
    Block (i) => (o) {{
        {body}
        c = Conv <pads = [1, 1, 1, 1]> (i, W)
        o = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """)
    x = x_feed(rng)
    result = checked_fold(model)
    (record,) = result.report.records
    assert (record.outcome, record.graph) == ("folded", "function local.Block")
    assert not any(n.op_type == "BatchNormalization" for n in result.model.functions[0].node)
    assert_close(run_ort(model, x), run_ort(result.model, x))


def test_names_metadata_and_doc_strings_are_preserved(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6))
    model.opset_import.add(domain="com.example", version=1)
    model.producer_name, model.model_version = "unit", 7
    model.doc_string = "model doc"
    model.graph.doc_string = "graph doc"
    onnx.helper.set_model_props(model, {"author": "me"})
    conv = model.graph.node[0]
    conv.doc_string = "conv doc"
    conv.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'layer1', 'layer1.conv']")
    result = checked_fold(model)
    out = result.model
    assert (out.doc_string, out.graph.doc_string, out.producer_name, out.model_version) == \
        ("model doc", "graph doc", "unit", 7)
    assert list(out.opset_import) == list(model.opset_import)
    assert list(out.metadata_props) == list(model.metadata_props)
    (node,) = out.graph.node
    assert node.doc_string == "conv doc" and list(node.metadata_props) == list(conv.metadata_props)


def test_fold_twice_changes_nothing_on_a_mixed_model(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6), inits=bn_params("b", 6, rng),
                    tail=["r = Relu (y)", f"z = BatchNormalization (r, {bn_inputs('b')})"],
                    outputs="float[N, 6, 6, 6] y, float[N, 6, 6, 6] z")
    once = checked_fold(model)
    twice = checked_fold(once.model)
    assert twice.model.SerializeToString() == once.model.SerializeToString()
    assert [r.outcome for r in twice.report.records] == ["kept"]


def test_external_data_is_read_and_written(rng: np.random.Generator, tmp_path: Path) -> None:
    model = conv_bn(rng, cout=64, spatial=(6, 6))
    x = x_feed(rng)
    expected = run_ort(model, x)
    src = tmp_path / "in.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="in.onnx.data", size_threshold=256)
    data_before = (tmp_path / "in.onnx.data").read_bytes()
    result = fold_model(src)
    out = save_model(result.model, tmp_path / "out.onnx", external_data=True)
    assert (tmp_path / "in.onnx.data").read_bytes() == data_before
    assert (tmp_path / "out.onnx.data").exists()
    assert_close(expected, run_ort(load_model(out), x))


def test_bn_in_loop_body_folds(rng: np.random.Generator) -> None:
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x, int64 trips) => (float[N, 4, 6, 6] y) {{
        keep = Constant <value = bool {{1}}> ()
        y = Loop (trips, keep, x) <
            body = b (int64 i, bool c, float[N, 4, 6, 6] h) => (bool co, float[N, 4, 6, 6] ho) {{
                co = Identity (c)
                v = Conv <pads = [1, 1, 1, 1]> (h, W)
                ho = BatchNormalization (v, {bn_inputs("bn")})
            }}
        >
    }}
    """, {"W": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), **bn_params("bn", 4, rng)})
    result = assert_folds(model, {**x_feed(rng), "trips": np.array(2, np.int64)})
    assert result.report.records[0].graph == "main/y.body"


def test_new_tensors_in_a_subgraph_never_shadow_outer_names(rng: np.random.Generator) -> None:
    # The outer graph already has a value named like the copy the fold writes into the branch.
    model = if_model(rng, "c_bias = Relu (x)\n        z = Identity (c_bias)", ", float[N, 4, 6, 6] z")
    model.graph.node[0].output[0] = "c.bias"
    model.graph.node[1].input[0] = "c.bias"
    result = assert_folds(model, {**x_feed(rng), "cond": np.array(True)})
    branch = next(a.g for a in result.model.graph.node[-1].attribute if a.name == "then_branch")
    assert "c.bias" not in {t.name for t in branch.initializer}


def _function_model(body: str, call_attrs: str, extra: str = "") -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18, "local" : 1]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
        y = local.Block <{call_attrs}> (x)
    }}
    <domain: "local", opset_import: ["" : 18]>
    Block <{extra}> (i) => (o) {{
        {body}
    }}
    """)


def _constants(arrays: dict[str, np.ndarray]) -> str:
    return "\n".join(f"{k} = Constant <value = float[{', '.join(map(str, v.shape))}] "
                     f"{{{', '.join(f'{x:.9g}' for x in v.reshape(-1))}}}> ()" for k, v in arrays.items())


def test_function_attribute_references_make_nodes_opaque(rng: np.random.Generator) -> None:
    # epsilon, a Constant's value and the Conv's group come from the function call: unknown when folding.
    w = rng.normal(0, 0.5, (4, 2, 1, 1)).astype(np.float32)
    body = _constants({"W": w, "V": rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), **bn_params("bn", 4, rng)})
    cases = {
        "epsilon=@eps": f"c = Conv (i, V)\n o = BatchNormalization <epsilon: float = @eps> (c, {bn_inputs('bn')})",
        "value_float=@k": "c = Conv (i, V)\n k = Constant <value_float: float = @k> ()\n o = Mul (c, k)",
        "group=@g": f"c = Conv <group: int = @g> (i, W)\n o = BatchNormalization (c, {bn_inputs('bn')})",
    }
    x = x_feed(rng)
    for ref, nodes in cases.items():
        model = _function_model(f"{body}\n{nodes}", "eps = 0.5, k = 3.0, g = 2", "eps, k, g")
        result = checked_fold(model)
        assert not any(r.outcome == "folded" for r in result.report.records), ref
        assert all(ref in r.reason for r in result.report.records if r.kind == "batchnorm"), ref
        assert_close(run_ort(model, x), run_ort(result.model, x))


@pytest.mark.parametrize(("op", "w_shape", "x_shape", "y_shape", "bias_add"), [
    ("Conv", (6, 4, 1, 1), (2, 4, 5, 5), (2, 6, 5, 5), False),
    ("ConvTranspose", (4, 6, 1, 1), (2, 4, 5, 5), (2, 6, 5, 5), False),
    ("Gemm", (8, 6), (3, 8), (3, 6), False),
    ("MatMul", (8, 6), (3, 8), (3, 6), False),
    ("MatMul", (8, 6), (3, 8), (3, 6), True),
    ("BatchNormalization", None, (2, 6, 5, 5), (2, 6, 5, 5), False),
])
def test_custom_domain_op_with_a_standard_name_is_not_folded_into(
        rng: np.random.Generator, op: str, w_shape: tuple[int, ...] | None, x_shape: tuple[int, ...],
        y_shape: tuple[int, ...], bias_add: bool) -> None:
    # local.<op> is a model-local function that adds a Relu: folding a BN into it would be wrong.
    channels = y_shape[1]
    inits = {**bn_params("bn", channels, rng), "k": rng.normal(0, 1, channels).astype(np.float32)}
    if w_shape is None:
        inits.update(bn_params("w", channels, rng))
        call, params = f"local.{op} (x, {bn_inputs('w')})", "(a, s, b, m, v)"
        inner = "t = BatchNormalization (a, s, b, m, v)"
    else:
        inits["W"] = rng.normal(0, 0.5, w_shape).astype(np.float32)
        call, params, inner = f"local.{op} (x, W)", "(a, w)", f"t = {op} (a, w)"
    tail = "a = Add (c, k)\n y = BatchNormalization (a, " if bias_add else "y = BatchNormalization (c, "
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18, "local" : 1]>
    g (float[{', '.join(map(str, x_shape))}] x) => (float[{', '.join(map(str, y_shape))}] y) {{
        c = {call}
        {tail}{bn_inputs("bn")})
    }}
    <domain: "local", opset_import: ["" : 18]>
    {op} {params} => (o) {{
        {inner}
        o = Relu (t)
    }}
    """, inits)
    feeds = {"x": rng.normal(0, 1, x_shape).astype(np.float32)}
    result = checked_fold(model)
    main = [r for r in result.report.records if r.graph == "main"]
    assert [r.outcome for r in main] == ["kept"] * len(main), result.report.to_json()
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))


@pytest.mark.parametrize("standalone", [False, True])
def test_ir3_model_gets_constant_nodes_not_initializers(rng: np.random.Generator, standalone: bool) -> None:
    # IR 3 requires every initializer to be a graph input; new tensors must not become overridable inputs.
    arrays = {**bn_params("bn", 6, rng), "W": rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float32)}
    x_shape = "2, 6, 5, 5" if standalone else "2, 4, 5, 5"
    nodes = "" if standalone else "c = Conv (x, W)"
    model = parse(f"""
    <ir_version: 3, opset_import: ["" : 8]>
    g (float[{x_shape}] x) => (float[2, 6, 5, 5] y) {{
        {_constants(arrays)}
        {nodes}
        y = BatchNormalization ({"x" if standalone else "c"}, {bn_inputs("bn")})
    }}
    """)
    feeds = {"x": rng.normal(0, 1, [int(d) for d in x_shape.split(",")]).astype(np.float32)}
    result = checked_fold(model, FoldOptions(standalone_bn="affine"))
    assert [r.outcome for r in result.report.records] == ["folded"]
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))


def test_dynamo_affine_free_bn_with_params_from_the_conv_output_shape(rng: np.random.Generator) -> None:
    # BatchNorm2d(affine=False) under dynamo: scale/bias = Expand(1 or 0, Shape(conv_out)[1:2]); the batch is
    # dynamic but the sliced channel dim is static. Another Shape reader of conv_out must follow the rename.
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "one": np.ones(1, np.float32),
             "zero": np.zeros(1, np.float32), "bn_mean": rng.normal(0, 1, 6).astype(np.float32),
             "bn_var": rng.uniform(0.2, 2, 6).astype(np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y, int64[4] s) <float[N, 6, 6, 6] c> {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        ch = Shape <start = 1, end = 2> (c)
        scale = Expand (one, ch)
        ch2 = Shape <start = 1, end = 2> (c)
        bias = Expand (zero, ch2)
        s = Shape (c)
        y = BatchNormalization (c, scale, bias, bn_mean, bn_var)
    }
    """, inits)
    result = assert_folds(model, x_feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Shape"]


@pytest.mark.parametrize("scopes", ["5", "[1, 2]", "['', None]", "(("])
def test_malformed_name_scope_metadata_gives_no_module_path(rng: np.random.Generator, scopes: str) -> None:
    model = conv_bn(rng, spatial=(6, 6))
    model.graph.node[1].metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
    (record,) = checked_fold(model).report.records
    assert (record.outcome, record.module) == ("folded", None)


@pytest.mark.parametrize("expr", ["k = Add (k6, k4)", "n = Constant <value = int64[1] {-3}> ()\n"
                                  "k = ConstantOfShape <value = float[1] {1.0}> (n)"])
def test_constant_expression_numpy_cannot_evaluate_is_not_a_constant(rng: np.random.Generator, expr: str) -> None:
    # An unchecked ModelProto given to the API: the expression is not a known constant, never a crash.
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 3, 3] x) => (float[N, 6, 3, 3] y) {{
        {expr}
        c = Conv (x, W)
        y = Mul (c, k)
    }}
    """)
    for name, shape in {"W": (6, 4, 1, 1), "k6": (6, 1, 1), "k4": (4, 1, 1)}.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(0, 1, shape).astype(np.float32), name))
    result = fold_model(model)  # the model is invalid on purpose: no checker here
    assert result.report.records == []
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
