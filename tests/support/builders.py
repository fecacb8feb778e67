"""Small ONNX models for tests, written as ONNX text, with randomized BatchNorm parameters."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.parser
from onnx import helper, numpy_helper

_NP_TYPES: dict[str, type] = {"float": np.float32, "float16": np.float16}  # ONNX text type -> numpy


def parse(text: str, initializers: dict[str, np.ndarray] | None = None, *, check: bool = True) -> onnx.ModelProto:
    """Parse ONNX text and attach initializers; the result passes the full checker (unless `check=False`)."""
    model = onnx.parser.parse_model(text)
    for name, array in (initializers or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def conv_bn(rng: np.random.Generator, *, cin: int = 4, cout: int = 6, spatial: Sequence[int | str] = (8, 8),
            group: int = 1, bias: bool = False, dtype: str = "float", param_dtype: type | None = None,
            w_scale: float = 0.5, bn_attrs: str = "", params: dict[str, np.ndarray] | None = None,
            bn_out: str = "y", tail: Sequence[str] = (), outputs: str | None = None, graph_inputs: str = "",
            inits: dict[str, np.ndarray] | None = None, opset: int = 18, ir_version: int = 8,
            check: bool = True) -> onnx.ModelProto:
    """Conv `c` (kernel 3, pads 1; weight `W`, bias `B` when `bias`) -> BatchNormalization `bn_out` (`float`/`float16`).

    The BN's parameters are random (`bn_params("bn", ...)`, or `params`), in `param_dtype` (default: `dtype`'s).
    `tail` holds nodes (ONNX text lines) after the BN, `inits` their initializers; `outputs` replaces the graph's
    outputs (default `y`, shaped like the input with `cout` channels); `graph_inputs` adds inputs (`float[6, 4, 3, 3]
    W` makes the weight one: its initializer is dropped). `check=False` skips the checker (deprecated ops).
    """
    np_dtype = _NP_TYPES[dtype]
    arrays = {"W": rng.normal(0, w_scale, (cout, cin // group, *[3] * len(spatial))).astype(np_dtype),
              **(params or bn_params("bn", cout, rng, param_dtype or np_dtype))}
    args = "x, W"
    if bias:
        arrays["B"] = rng.normal(0, 0.5, cout).astype(np_dtype)
        args += ", B"
    arrays.update(inits or {})
    for name in re.findall(r"\]\s*(\w+)", graph_inputs):
        arrays.pop(name, None)
    dims = ", ".join(map(str, spatial))
    inputs = ", ".join([f"{dtype}[N, {cin}, {dims}] x", *([graph_inputs] if graph_inputs else [])])
    outputs = outputs or f"{dtype}[N, {cout}, {dims}] y"
    nodes = "\n".join(tail)
    attrs = f"pads = {[1] * 2 * len(spatial)}" + (f", group = {group}" if group != 1 else "")
    return parse(f"""
    <ir_version: {ir_version}, opset_import: ["" : {opset}]>
    g ({inputs}) => ({outputs}) {{
        c = Conv <{attrs}> ({args})
        {bn_out} = BatchNormalization {bn_attrs} (c, {bn_inputs("bn")})
        {nodes}
    }}
    """, arrays, check=check)


def bn_params(prefix: str, channels: int, rng: np.random.Generator, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Random scale/bias/mean/var (never the defaults that hide folding bugs)."""
    return {
        f"{prefix}_scale": (rng.uniform(0.3, 2.0, channels) * rng.choice([-1, 1], channels)).astype(dtype),
        f"{prefix}_bias": rng.normal(0, 0.7, channels).astype(dtype),
        f"{prefix}_mean": rng.normal(0, 0.8, channels).astype(dtype),
        f"{prefix}_var": rng.uniform(0.2, 3.0, channels).astype(dtype),
    }


def bn_inputs(prefix: str) -> str:
    """The parameter input list of a BN node in ONNX text."""
    return f"{prefix}_scale, {prefix}_bias, {prefix}_mean, {prefix}_var"


def x_feed(rng: np.random.Generator, c: int = 4, hw: int = 6, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Random N(0, 1) values for the input `x` of shape [2, c, hw, hw]."""
    return {"x": rng.normal(0, 1, (2, c, hw, hw)).astype(dtype)}


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with ONNX Runtime on CPU, all graph optimizations disabled (the library's own `OrtSession`)."""
    from foldnorm.bench.backends.ort_cpu import OrtSession

    with OrtSession(model.SerializeToString()) as session:
        return session.run(feeds)


def assert_close(expected: list[np.ndarray], got: list[np.ndarray], rtol: float = 1e-5) -> None:
    """Outputs agree relative to each output's scale, and nothing is NaN/Inf."""
    assert len(expected) == len(got)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert np.all(np.isfinite(g)), "NaN/Inf in output"
        scale = max(float(np.max(np.abs(e))), 1e-12)
        err = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))))
        assert err <= rtol * scale, f"max abs error {err:.3g} exceeds {rtol:g} x scale {scale:.3g}"


def op_count(model: onnx.ModelProto, op: str) -> int:
    """How many nodes of type `op` the main graph has."""
    return sum(1 for n in model.graph.node if n.op_type == op)


def listed_model(rng: np.random.Generator, ir_version: int, *, computed: bool = False) -> onnx.ModelProto:
    """x -> Conv(W) -> BN, every initializer also a graph input (in the input list before x, as caffe2 wrote them).

    `computed`: the BN's mean and variance are ConstantOfShape fills of a listed shape (ONNX's light models)."""
    params = bn_params("bn", 6, rng)
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **params}
    stats = ""
    if computed:
        del inits["bn_mean"], inits["bn_var"]
        inits["n"] = np.array([6], np.int64)
        stats = """bn_mean = ConstantOfShape <value = float[1] {0.25}> (n)
        bn_var = ConstantOfShape <value = float[1] {1.5}> (n)"""
    model = parse(f"""
    <ir_version: {ir_version}, opset_import: ["" : 9]>
    g (float[2, 4, 6, 6] x) => (float[2, 6, 6, 6] y) {{
        {stats}
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits, check=False)
    listed = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in inits.items()]
    model.graph.input.insert(0, listed[0])
    model.graph.input.extend(listed[1:])
    onnx.checker.check_model(model, full_check=True)
    return model
