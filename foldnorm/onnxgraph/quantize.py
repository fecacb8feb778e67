"""QuantizeLinear and DequantizeLinear on numpy arrays, as ONNX Runtime computes them (integer types only).

    DequantizeLinear:  y = (x - zero_point) * scale              in the scale's float type
    QuantizeLinear:    y = saturate(round(x / scale) + zero_point)  round half to even, in float32

`scale` and `zero_point` are a scalar (per tensor) or 1-D along `axis` (per axis, opset 13+). Blocked
quantization (`block_size`, opset 21), float8/int4 types and anything else these functions cannot reproduce
exactly raise `ValueError`, which the constant resolver reads as "not a known constant".
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.onnxgraph.graph import attr

#: integer element types a quantized tensor may have here, with their numpy type.
INTEGER_TYPES: dict[int, np.dtype] = {
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.INT16: np.dtype(np.int16),
    onnx.TensorProto.UINT16: np.dtype(np.uint16),
    onnx.TensorProto.INT32: np.dtype(np.int32),
}


def is_integer_type(dtype: np.dtype) -> bool:
    """Whether `dtype` is one of the integer types quantized tensors use here."""
    return np.dtype(dtype) in INTEGER_TYPES.values()


def channel_shape(param: np.ndarray, axis: int | None, rank: int) -> tuple[int, ...]:
    """The shape that broadcasts `param` along `axis` of a rank-`rank` tensor (`()` when `axis` is None)."""
    if axis is None:
        return ()
    shape = [1] * rank
    shape[axis] = param.size
    return tuple(shape)


def quantization_axis(node: onnx.NodeProto, scale: np.ndarray, rank: int) -> int | None:
    """The axis a Q/DQ node's parameters run along (normalized), or None for per-tensor parameters (a scalar
    or one-element scale, as ONNX Runtime reads it).

    Raises `ValueError` for what these functions do not evaluate (blocked quantization, scales of rank > 1).
    """
    if attr(node, "block_size", 0):
        raise ValueError("blocked quantization is not evaluated")
    if scale.size == 1 and scale.ndim <= 1:
        return None
    if scale.ndim > 1:
        raise ValueError("a scale of rank > 1")
    axis = int(attr(node, "axis", 1))
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _broadcast(param: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    return param.reshape(channel_shape(param, axis, rank))


def dequantize(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    """DequantizeLinear of constant `args` (x, scale[, zero_point])."""
    x, scale = args[0], args[1]
    if not is_integer_type(x.dtype) or not np.issubdtype(scale.dtype, np.floating):
        raise ValueError("only integer tensors with float scales are dequantized here")
    axis = quantization_axis(node, scale, x.ndim)
    zero = args[2] if len(args) > 2 else np.zeros_like(scale, dtype=x.dtype)
    centred = x.astype(np.int64) - _broadcast(zero, axis, x.ndim).astype(np.int64)
    return (centred.astype(scale.dtype) * _broadcast(scale, axis, x.ndim)).astype(scale.dtype)


def quantize(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    """QuantizeLinear of constant `args` (x, scale[, zero_point]); without a zero point the output is uint8."""
    x, scale = args[0], args[1]
    if attr(node, "output_dtype", 0) or attr(node, "saturate", 1) != 1:
        raise ValueError("output_dtype and saturate are not evaluated")
    zero = args[2] if len(args) > 2 else np.zeros_like(scale, dtype=np.uint8)
    if not is_integer_type(zero.dtype) or x.dtype != np.float32 or scale.dtype != np.float32:
        raise ValueError("only float32 tensors quantized to integers are evaluated here")
    axis = quantization_axis(node, scale, x.ndim)
    info = np.iinfo(zero.dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.rint(x / _broadcast(scale, axis, x.ndim))
    if not np.all(np.isfinite(ratio)):
        raise ValueError("a value that does not quantize to a finite number")
    shifted = ratio.astype(np.float64) + _broadcast(zero, axis, x.ndim).astype(np.float64)
    return np.clip(shifted, info.min, info.max).astype(zero.dtype)
