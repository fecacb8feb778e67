"""Quantized (QDQ) test models written as ONNX text: Conv/Gemm/MatMul with DequantizeLinear weights, activation
Q/DQ pairs, and a BatchNormalization with random parameters."""

from __future__ import annotations

import numpy as np
import onnx

from support.builders import bn_inputs, bn_params, parse


def quantize_weight(w: np.ndarray, axis: int | None = 0, dtype: type = np.int8,
                    zero: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric quantization of `w` per channel along `axis` (per tensor when None) onto [-127, 127] + `zero`:
    `(integers, scale, zero_point)`; int8 with zero point 0 never holds -128."""
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    scale = (np.abs(moved).max(axis=1) / 127).astype(np.float32)
    q = np.clip(np.rint(moved / scale[:, None]), -127, 127) + zero
    q = q.reshape(np.moveaxis(w, axis, 0).shape if axis is not None else w.shape).astype(dtype)
    q = np.moveaxis(q, 0, axis) if axis is not None else q
    if axis is None:
        return q, scale.reshape(()), np.array(zero, dtype)
    return q, scale, np.full(scale.shape, zero, dtype)


def qdq_conv_bn(rng: np.random.Generator, *, cin: int = 4, cout: int = 6, opset: int = 18, per_channel: bool = True,
                weight: str = "int8", zero: int = 0, qat: bool = False, bias: str = "", pair: bool = True,
                io_pairs: bool = True, params: dict[str, np.ndarray] | None = None, group: int = 1,
                pads: int = 1) -> onnx.ModelProto:
    """`x -> Q/DQ -> Conv(DQ(W_q)[, bias]) [-> Q -> DQ] -> BN -> Q/DQ -> y` (spatial 8x8, kernel 3).

    `weight`: int8 or uint8 (`zero` its zero point); `per_channel`: axis 0, else one scale; `qat`: the weight is
    `QuantizeLinear(W float)` as a QAT export writes it; `bias`: "" (none), "int32" (ONNX Runtime's
    `DequantizeLinear(int32, x_scale * w_scale)`) or "float"; `pair`: a Q/DQ pair between Conv and BN;
    `io_pairs`: the Q/DQ pairs on the input and after the BN.
    """
    dtype = {"int8": np.int8, "uint8": np.uint8}[weight]
    w = rng.normal(0, 0.5, (cout, cin // group, 3, 3)).astype(np.float32)
    q, ws, wz = quantize_weight(w, 0 if per_channel else None, dtype, zero)
    xs = np.array(0.03, np.float32)
    arrays: dict[str, np.ndarray] = {
        "ws": ws, "wz": wz, "xs": xs, "xz": np.array(0, np.int8), "cs": np.array(0.2, np.float32),
        "cz": np.array(3, np.int8), "ys": np.array(0.4, np.float32), "yz": np.array(-2, np.int8),
        **(params or bn_params("bn", cout, rng)),
    }
    axis = "<axis = 0>" if per_channel else ""
    if qat:
        arrays["Wf"] = ((q.astype(np.float32) - zero) * ws.reshape(-1, 1, 1, 1)).astype(np.float32)
        weight_nodes = f"wq = QuantizeLinear {axis} (Wf, ws, wz)\n        wd = DequantizeLinear {axis} (wq, ws, wz)"
    else:
        arrays["Wq"] = q
        weight_nodes = f"wd = DequantizeLinear {axis} (Wq, ws, wz)"
    x = "xd" if io_pairs else "x"
    args = f"{x}, wd"
    if bias == "int32":
        grid = (xs * np.broadcast_to(ws, (cout,))).astype(np.float32)
        arrays.update(Bq=rng.integers(-2000, 2000, cout).astype(np.int32), bs=grid, bz=np.zeros(cout, np.int32))
        weight_nodes += "\n        bd = DequantizeLinear <axis = 0> (Bq, bs, bz)"
        args += ", bd"
    elif bias == "float":
        arrays["B"] = rng.normal(0, 0.5, cout).astype(np.float32)
        args += ", B"
    conv_out = "c"
    lines = [
        "xq = QuantizeLinear (x, xs, xz)\n        xd = DequantizeLinear (xq, xs, xz)" if io_pairs else "",
        weight_nodes,
        f"c = Conv <pads = {[pads] * 4}{f', group = {group}' if group > 1 else ''}> ({args})",
    ]
    if pair:
        lines.append("cq = QuantizeLinear (c, cs, cz)\n        cd = DequantizeLinear (cq, cs, cz)")
        conv_out = "cd"
    bn_out = "b" if io_pairs else "y"
    lines.append(f"{bn_out} = BatchNormalization ({conv_out}, {bn_inputs('bn')})")
    if io_pairs:
        lines.append("bq = QuantizeLinear (b, ys, yz)\n        y = DequantizeLinear (bq, ys, yz)")
    side = 8 + 2 * pads - 2
    body = "\n        ".join(line for line in lines if line)
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[N, {cin}, 8, 8] x) => (float[N, {cout}, {side}, {side}] y) {{
        {body}
    }}
    """, arrays)
