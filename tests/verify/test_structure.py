"""verify's structure check, the fold report and `survey` classify the same nodes: main graph, If branches and
model-local functions, a lowered GroupNorm counted as a GroupNorm."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse

from foldnorm import compare_models, fold_model
from foldnorm.fold.normalizations import NormCounts, survey


def _constant(name: str, array: np.ndarray) -> str:
    values = ", ".join(f"{v:.9g}" for v in array.reshape(-1))
    return f"{name} = Constant <value = float[{', '.join(map(str, array.shape))}] {{{values}}}> ()"


@pytest.fixture
def model(rng: np.random.Generator) -> onnx.ModelProto:
    """A lowered GroupNorm in the main graph, a LayerNorm in an If branch, Conv -> BN -> LayerNorm in a function."""
    inits = {"shape": np.array([0, 2, -1], np.int64), "back": np.array([0, 4, 6, 6], np.int64),
             "ones": np.ones(2, np.float32), "zeros": np.zeros(2, np.float32),
             "gs": rng.normal(1, 0.3, (4, 1, 1)).astype(np.float32),
             "gb": rng.normal(0, 0.3, (4, 1, 1)).astype(np.float32),
             "ln_s": rng.normal(1, 0.3, 6).astype(np.float32), "ln_b": rng.normal(0, 0.3, 6).astype(np.float32)}
    body = {"W": rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), **bn_params("bn", 4, rng),
            "fs": rng.normal(1, 0.3, 6).astype(np.float32), "fb": rng.normal(0, 0.3, 6).astype(np.float32)}
    constants = "\n".join(_constant(k, v) for k, v in body.items())
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18, "local" : 1]>
    g (float[N, 4, 6, 6] x, bool cond) => (float[N, 4, 6, 6] y) {{
        r = Reshape (x, shape)
        i = InstanceNormalization (r, ones, zeros)
        u = Reshape (i, back)
        m = Mul (u, gs)
        a = Add (m, gb)
        f = local.Block (a)
        y = If (cond) <
            then_branch = t () => (float[N, 4, 6, 6] ty) {{
                ty = LayerNormalization <axis = -1> (f, ln_s, ln_b)
            }},
            else_branch = e () => (float[N, 4, 6, 6] ey) {{
                ey = Identity (f)
            }}
        >
    }}
    <domain: "local", opset_import: ["" : 18]>
    Block (xi) => (o) {{
        {constants}
        c = Conv <pads = [1, 1, 1, 1]> (xi, W)
        b = BatchNormalization (c, {bn_inputs("bn")})
        o = LayerNormalization <axis = -1> (b, fs, fb)
    }}
    """, inits)


def test_survey_counts_every_graph_and_the_lowered_group_norm(model: onnx.ModelProto) -> None:
    counts = survey(model)
    assert counts == NormCounts(batchnorm=1, groupnorm=1, layernorm=2)
    assert counts.protected == 3
    assert counts.by_op() == {"GroupNormalization": 1, "LayerNormalization": 2, "InstanceNormalization": 0}


def test_fold_report_verify_and_survey_agree(model: onnx.ModelProto) -> None:
    folded = fold_model(model)
    assert folded.report.norms == survey(model)
    assert folded.report.summary().startswith("1/1 BatchNorm folded; 1 folded, 0 skipped, 3 kept in all; "
                                              "3 GroupNorm/LayerNorm/InstanceNorm intact")
    result = compare_models(model, folded.model)
    assert result.ok, result.details()
    structure = result.structure
    assert structure is not None
    assert (structure.batchnorm_reference, structure.batchnorm_candidate) == (1, 0)  # the BN inside the function
    assert [(p.node, p.op_type, p.graph, p.status) for p in structure.protected] == [
        ("i", "InstanceNormalization", "main", "intact"),
        ("ty", "LayerNormalization", "main/y.then_branch", "intact"),
        ("o", "LayerNormalization", "function local.Block", "intact"),
    ]
    # the fold report names the graphs the same way
    assert [(r.node, r.graph) for r in folded.report.records if r.outcome == "kept"] == [
        (p.node, p.graph) for p in structure.protected]


def test_changed_norm_inside_a_function_is_reported(model: onnx.ModelProto) -> None:
    candidate = fold_model(model).model
    norm = next(n for n in candidate.functions[0].node if n.op_type == "LayerNormalization")
    norm.attribute.append(onnx.helper.make_attribute("epsilon", 1e-5))  # the default: the numbers stay equal
    result = compare_models(model, candidate)
    assert result.numerics_ok
    assert result.structure is not None
    assert [(p.graph, p.status) for p in result.structure.protected if p.status != "intact"] == [
        ("function local.Block", "changed")]
    assert not result.ok
