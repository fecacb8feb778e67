"""Property tests: random graphs from the fold engine's patterns, folded and compared with ONNX Runtime.

Every case must either fold with outputs within tolerance or be refused with a reason and an unchanged
graph; never a wrong output, an invalid model or a crash. The quick profile runs in `make test`;
`FOLDNORM_FUZZ=1` (what `make fuzz` sets) selects the long one (`FOLDNORM_FUZZ_EXAMPLES` per test).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from hypothesis import given
from hypothesis import strategies as st
from support.builders import bn_inputs, bn_params, parse
from support.properties import PROFILE, TYPES, check, outcomes


def anydims(rank: int, prefix: str = "d") -> str:
    """Symbolic dims of a known rank (shape inference fills in the values)."""
    return ", ".join(f"{prefix}{k}" for k in range(rank))


def ints(n: int, lo: int, hi: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(lo, hi), min_size=n, max_size=n)


@st.composite
def conv_cases(draw: Any, transpose: bool) -> dict[str, Any]:
    rank = draw(st.integers(1, 3))
    case = {
        "rank": rank, "group": draw(st.integers(1, 3)), "cin_g": draw(st.integers(1, 3)),
        "cout_g": draw(st.integers(1, 3)), "kernel": draw(ints(rank, 1, 3)), "strides": draw(ints(rank, 1, 2)),
        "dilations": draw(ints(rank, 1, 2)), "pads": draw(ints(2 * rank, 0, 1)), "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from(sorted(TYPES))), "seed": draw(st.integers(0, 2**31)),
    }
    if transpose:
        case["output_padding"] = [draw(st.integers(0, s - 1)) for s in case["strides"]]  # ORT: < stride
    return case


def conv_model(case: dict[str, Any], op: str, tail: str, extra_inits: dict[str, np.ndarray],
               rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    np_type, _ = TYPES[case["dtype"]]
    g = case["group"]
    cin, cout = case["cin_g"] * g, case["cout_g"] * g
    shape = (cin, case["cout_g"]) if op == "ConvTranspose" else (cout, case["cin_g"])
    inits = {"W": rng.normal(0, 0.5, (*shape, *case["kernel"])).astype(np_type), **extra_inits}
    args = "x, W"
    if case["bias"]:
        inits["B"] = rng.normal(0, 0.5, cout).astype(np_type)
        args += ", B"
    attrs = [f"group = {g}", f"kernel_shape = {case['kernel']}", f"strides = {case['strides']}",
             f"dilations = {case['dilations']}", f"pads = {case['pads']}"]
    if "output_padding" in case:
        attrs.append(f"output_padding = {case['output_padding']}")
    size = [(k - 1) * d + 3 for k, d in zip(case["kernel"], case["dilations"])]
    dims = ", ".join(str(s) for s in size)
    t = case["dtype"]
    text = f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({t}[2, {cin}, {dims}] x) => ({t}[{anydims(case["rank"] + 2)}] y) {{
        c = {op} <{", ".join(attrs)}> ({args})
        {tail}
    }}
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in inits.items())
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.ClearField("value_info")  # the fold must not depend on inferred shapes
    onnx.checker.check_model(model, full_check=True)
    return model, {"x": rng.normal(0, 1, (2, cin, *size)).astype(np_type)}


@PROFILE
@given(st.booleans().flatmap(lambda transpose: conv_cases(transpose)))
def test_conv_family_bn_property(case: dict[str, Any]) -> None:
    """Conv or ConvTranspose (rank 1-3, groups, strides, dilations, pads, output_padding, bias) + BN."""
    rng = np.random.default_rng(case["seed"])
    np_type, rtol = TYPES[case["dtype"]]
    op = "ConvTranspose" if "output_padding" in case else "Conv"
    cout = case["cout_g"] * case["group"]
    model, feeds = conv_model(case, op, f"y = BatchNormalization (c, {bn_inputs('bn')})",
                              bn_params("bn", cout, rng, np_type), rng)
    result = check(model, feeds, rtol)
    if case["dtype"] == "float":
        assert outcomes(result) == ["folded"]


AFFINE_SHAPES = ["channel", "channel4", "scalar", "last", "several"]


@PROFILE
@given(conv_cases(transpose=False), st.lists(st.tuples(st.sampled_from(["Mul", "Add", "Sub", "Div", "BN"]),
                                                       st.sampled_from(AFFINE_SHAPES), st.booleans()),
                                             min_size=1, max_size=3))
def test_conv_chain_property(case: dict[str, Any], chain: list[tuple[str, str, bool]]) -> None:
    """Conv followed by BNs and Mul/Add/Sub/Div with constants of random (right and wrong) shapes."""
    rng = np.random.default_rng(case["seed"])
    np_type, rtol = TYPES[case["dtype"]]
    cout, rank = case["cout_g"] * case["group"], case["rank"]
    size = [(k - 1) * d + 3 for k, d in zip(case["kernel"], case["dilations"])]
    pads = case["pads"]
    out_last = (size[-1] + pads[rank - 1] + pads[-1] - case["dilations"][-1] * (case["kernel"][-1] - 1) - 1) \
        // case["strides"][-1] + 1
    inits: dict[str, np.ndarray] = {}
    lines, prev = [], "c"
    for k, (op, shape_kind, swap) in enumerate(chain):
        out = "y" if k == len(chain) - 1 else f"h{k}"
        if op == "BN":
            inits.update(bn_params(f"bn{k}", cout, rng, np_type))
            lines.append(f"{out} = BatchNormalization ({prev}, {bn_inputs(f'bn{k}')})")
        else:
            shape = {"channel": (cout, *[1] * rank), "channel4": (1, cout, *[1] * rank), "scalar": (),
                     "last": (out_last,), "several": (cout, *[1] * (rank - 1), out_last)}[shape_kind]
            value = rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)
            inits[f"k{k}"] = np.asarray(value, dtype=np_type)
            a, b = (f"k{k}", prev) if swap and op != "Div" else (prev, f"k{k}")
            lines.append(f"{out} = {op} ({a}, {b})")
        prev = out
    model, feeds = conv_model(case, "Conv", "\n".join(lines), inits, rng)
    check(model, feeds, rtol * 4)


@PROFILE
@given(st.integers(0, 1), st.integers(0, 1), st.sampled_from([1.0, 0.5, -2.0]), st.sampled_from([1.0, 0.0, 0.7]),
       st.sampled_from(["none", "scalar", "n", "1n", "mn", "m1"]), st.sampled_from(sorted(TYPES)),
       st.integers(0, 2**31))
def test_gemm_bn_property(trans_a: int, trans_b: int, alpha: float, beta: float, c_kind: str, dtype: str,
                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    np_type, rtol = TYPES[dtype]
    m, k, n = 3, 4, 5
    inits = {"B": rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np_type), **bn_params("bn", n, rng, np_type)}
    args = "a, B"
    c_shape = {"none": None, "scalar": (), "n": (n,), "1n": (1, n), "mn": (m, n), "m1": (m, 1)}[c_kind]
    if c_shape is not None:
        inits["C"] = rng.normal(0, 0.5, c_shape).astype(np_type)
        args += ", C"
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({dtype}[{f"{k}, {m}" if trans_a else f"{m}, {k}"}] a) => ({dtype}[{m}, {n}] y) {{
        c = Gemm <transA = {trans_a}, transB = {trans_b}, alpha = {alpha}, beta = {beta}> ({args})
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)
    feeds = {"a": rng.normal(0, 1, (k, m) if trans_a else (m, k)).astype(np_type)}
    result = check(model, feeds, rtol)
    if dtype == "float":
        assert outcomes(result) == ["folded"]


@PROFILE
@given(st.integers(2, 3), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_matmul_bn_property(rank: int, bias: bool, equal_lengths: bool, seed: int) -> None:
    """Rank-2 MatMul (+ bias) + BN folds; rank 3 never does, even when the lengths agree."""
    rng = np.random.default_rng(seed)
    n = 4
    rows = n if equal_lengths else 3
    a_dims = "2, 5" if rank == 2 else f"2, {rows}, 5"
    y_dims = f"2, {n}" if rank == 2 else f"2, {rows}, {n}"
    channels = n if rank == 2 else rows
    inits = {"W": rng.normal(0, 0.5, (5, n)).astype(np.float32), "b": rng.normal(0, 0.5, n).astype(np.float32),
             **bn_params("bn", channels, rng)}
    add = "h = Add (m, b)" if bias else "h = Identity (m)"
    if not bias:
        del inits["b"]
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[{a_dims}] x) => (float[{y_dims}] y) {{
        m = MatMul (x, W)
        {add}
        y = BatchNormalization (h, {bn_inputs("bn")})
    }}
    """, inits)
    feeds = {"x": rng.normal(0, 1, [int(d) for d in a_dims.split(", ")]).astype(np.float32)}
    result = check(model, feeds, 2e-5)
    assert outcomes(result) == (["folded"] if rank == 2 and bias else ["kept"] if not bias else ["skipped"])


@PROFILE
@given(st.booleans(), st.booleans(), st.integers(1, 2), st.integers(0, 1), st.integers(0, 2**31))
def test_shared_fanout_and_bn_before_conv_property(shared: bool, fanout: bool, group: int, pad: int,
                                                    seed: int) -> None:
    """Shared weights, a producer read twice, and BN before a (padded or unpadded) grouped Conv."""
    rng = np.random.default_rng(seed)
    inits = {"W": rng.normal(0, 0.5, (4, 4 // group, 3, 3)).astype(np.float32),
             "V": rng.normal(0, 0.5, (4, 4 // group, 3, 3)).astype(np.float32),
             **bn_params("a", 4, rng), **bn_params("b", 4, rng), **bn_params("p", 4, rng)}
    second = "W" if shared else "V"
    extra = "z = Relu (c)" if fanout else "z = Relu (y)"
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 4, 7, 7] x) => (float[{anydims(4, "y")}] y, float[{anydims(4, "z")}] z, float[{anydims(4, "w")}] w) {{
        n = BatchNormalization (x, {bn_inputs("p")})
        c = Conv <group = {group}, pads = [{pad}, {pad}, {pad}, {pad}]> (n, W)
        y = BatchNormalization (c, {bn_inputs("a")})
        {extra}
        d = Conv <group = {group}, pads = [1, 1, 1, 1]> (x, {second})
        w = BatchNormalization (d, {bn_inputs("b")})
    }}
    """, inits)
    result = check(model, {"x": rng.normal(0, 1, (2, 4, 7, 7)).astype(np.float32)}, 2e-5)
    by_node = {r.node: r for r in result.report.records}
    assert by_node["w"].outcome == "folded"
    assert by_node["y"].outcome == ("skipped" if fanout else "folded")
    assert by_node["n"].outcome == ("skipped" if pad else "folded")
    if shared and not fanout:
        assert any("shared" in r.reason for r in result.report.records)
