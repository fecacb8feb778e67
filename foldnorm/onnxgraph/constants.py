"""Evaluate values that are constant although they are not initializers.

Exporters hand parameters over as `Constant` nodes, `Identity` chains (the legacy torch exporter shares
identical tensors that way), `Cast`/`CastLike`, and the raw dynamo exporter's `Expand(Shape(W))` zero
bias. A value is constant when it depends only on initializers and constant nodes; `CastLike` and `Shape`
only need the static type or shape of their graph-input argument.

Evaluation is bounded (a 1 kB model can ask for a ConstantOfShape of 10^10 elements): each value's size is
computed from its inputs' shapes before numpy allocates it, and a value over `ElementBudget.per_value`
elements, or one that would take the values computed so far past `ElementBudget.total`, is not a constant;
`reason()` says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from foldnorm.onnxgraph.external import is_on_disk, tensor_array
from foldnorm.onnxgraph.graph import GraphIndex, attr, attribute_refs, legacy_broadcast
from foldnorm.onnxgraph.quantize import dequantize, quantize
from foldnorm.onnxgraph.tensors import element_count, graph_tensors

_MAX_DEPTH = 64
ELEMENT_FLOOR = 64 << 20  # elements one computed value may always have
_READ_AGAIN = 1024  # initializers held in the message up to this many elements are not cached


@dataclass
class ElementBudget:
    """How many elements the evaluator may materialise: per value, and in all (`spent` so far)."""

    per_value: int
    total: int
    spent: int = 0

    @classmethod
    def for_graph(cls, graph: onnx.GraphProto) -> ElementBudget:
        """max(64 Mi, 2x the graph's largest tensor) per value; max(4x that, 2x all its tensors) in all."""
        counts = [element_count(t) for t in graph_tensors(graph)]
        per_value = max(ELEMENT_FLOOR, 2 * max(counts, default=0))
        return cls(per_value, max(4 * per_value, 2 * sum(counts)))

    def refusal(self, elements: int) -> str | None:
        """Why a value of `elements` elements may not be computed (None: it may, and it is counted)."""
        elements = max(elements, 0)
        if elements > self.per_value:
            return (f"a value too large to evaluate ({elements:.3g} elements; the constant evaluator stops at "
                    f"{self.per_value:.3g})")
        if self.spent + elements > self.total:
            return (f"a value the constant evaluator did not compute (its budget of {self.total:.3g} elements "
                    "for this model is spent)")
        self.spent += elements
        return None


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _reshape(data: np.ndarray, shape: np.ndarray, allowzero: int) -> np.ndarray:
    target = [int(d) for d in shape]
    if not allowzero:
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


def _unsqueeze(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    axes = args[1] if len(args) > 1 else np.array(attr(node, "axes"))
    out = args[0]
    rank = out.ndim + len(axes)
    for a in sorted(int(x) % rank for x in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    axes = args[1] if len(args) > 1 else attr(node, "axes")
    if axes is None:
        return np.squeeze(args[0])
    return np.squeeze(args[0], axis=tuple(int(a) % args[0].ndim for a in axes))


def _reduce_mean(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    """ONNX ReduceMean (axes as input from opset 18, an attribute before), computed in float64, rounded once."""
    data = args[0]
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(f"ReduceMean of {data.dtype} is not evaluated")
    axes = args[1] if len(args) > 1 else attr(node, "axes")
    if axes is None or len(axes) == 0:
        if attr(node, "noop_with_empty_axes", 0):
            return data
        axes = range(data.ndim)
    axis = tuple(sorted({int(a) % data.ndim for a in axes})) if data.ndim else None
    mean = np.mean(data, axis=axis, dtype=np.float64, keepdims=bool(attr(node, "keepdims", 1)))
    return np.asarray(mean).astype(data.dtype)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: integers divide exactly, truncating toward zero (as C does), not through float64."""
    if not np.issubdtype(a.dtype, np.integer):
        return np.divide(a, b)
    quotient = np.floor_divide(a, b)
    return quotient + ((quotient * b != a) & ((a < 0) != (b < 0)))


_Eval = Callable[[onnx.NodeProto, list[np.ndarray]], np.ndarray]

_ELEMENTWISE: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _divide,
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Neg": np.negative,
}

_OPS: dict[str, _Eval] = {
    "Identity": lambda n, a: a[0],
    "Cast": lambda n, a: a[0].astype(_np_dtype(attr(n, "to"))),
    "Expand": lambda n, a: a[0] * np.ones([int(d) for d in a[1]], dtype=a[0].dtype),
    "Reshape": lambda n, a: _reshape(a[0], a[1], attr(n, "allowzero", 0)),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda n, a: np.concatenate(a, axis=attr(n, "axis", 1)),  # Concat-1: axis 1 by default
    "Transpose": lambda n, a: np.transpose(a[0], attr(n, "perm")),
    "Flatten": lambda n, a: a[0].reshape(int(np.prod(a[0].shape[: attr(n, "axis", 1)])), -1),
    "ReduceMean": _reduce_mean,
    "DequantizeLinear": dequantize,
    "QuantizeLinear": quantize,
}


class ConstantResolver:
    """Resolves value names of one graph (and its enclosing scopes) to numpy arrays when constant."""

    def __init__(self, index: GraphIndex, outer: ConstantResolver | None = None) -> None:
        self.index = index
        self.outer = outer
        self.budget: ElementBudget = outer.budget if outer is not None else ElementBudget.for_graph(index.graph)
        self._cache: dict[str, np.ndarray | None] = {}
        self._reasons: dict[str, str] = {}

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The constant value of `name`, or None when it depends on a graph input or is unknown."""
        if not name:
            return None
        if name in self._cache:
            return self._cache[name]
        result = self._evaluate(name, depth)
        if not self._read_again(name):
            self._cache[name] = result
        return result

    def _read_again(self, name: str) -> bool:
        """Whether `name` is a small initializer held in the message: read again when asked again rather than
        kept (on a graph of many small tensors the copies would outweigh the graph)."""
        tensor = self.index.initializers.get(name)
        return tensor is not None and not is_on_disk(tensor) and element_count(tensor) <= _READ_AGAIN

    def forget(self, name: str) -> None:
        """Drop a cached value after the graph changed it."""
        self._cache.pop(name, None)
        self._reasons.pop(name, None)

    def reason(self, name: str) -> str | None:
        """Why `name` is not a constant when the evaluator's budget stopped it (None otherwise)."""
        if name in self._reasons or name in self.index.producer or self.outer is None:
            return self._reasons.get(name)
        return self.outer.reason(name)

    def _evaluate(self, name: str, depth: int) -> np.ndarray | None:
        index = self.index
        if name in index.graph_inputs:
            return None
        tensor = index.initializers.get(name)
        if tensor is not None:
            return index.tensor_value(tensor)
        node = index.producer.get(name)
        if node is None:
            return self.outer.value(name, depth) if self.outer is not None else None
        if (depth > _MAX_DEPTH or node.domain not in ("", "ai.onnx") or len(node.output) != 1
                or attribute_refs(node)):
            return None
        try:
            with np.errstate(all="ignore"):  # NaN and infinities are values like any other (folds refuse them)
                return self._evaluate_node(node, depth)
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError):
            return None  # not computable here (e.g. shapes that do not broadcast): not a known constant

    def _evaluate_node(self, node: onnx.NodeProto, depth: int) -> np.ndarray | None:
        op = node.op_type
        if op == "Constant":
            return _constant_attr(node)
        if op == "CastLike":
            target = self.index.elem_type(node.input[1])
            source = self._input(node, 0, depth)
            if target is None or source is None:
                return None
            return source.astype(_np_dtype(target))
        if op == "Shape":
            # Only the sliced dims must be static: dynamo's Shape(x)[1:2] of a dynamic-batch x is a constant.
            start, end = attr(node, "start", 0), attr(node, "end", None)
            shape = self.index.shape(node.input[0])
            if shape is None or not all(isinstance(d, int) for d in shape[start:end]):
                known = self._input(node, 0, depth)
                if known is None:
                    return None
                shape = list(known.shape)
            return np.array(shape[start:end], dtype=np.int64)
        if op not in _ELEMENTWISE and op not in _OPS and op != "ConstantOfShape":
            return None
        if legacy_broadcast(node):
            return None  # opset 6 and older: the second operand aligned from `axis`, not by numpy's rules
        args: list[np.ndarray] = []
        for k, inp in enumerate(node.input):
            if not inp:
                continue
            value = self._input(node, k, depth)
            if value is None:
                return None
            args.append(value)
        refusal = self.budget.refusal(_output_elements(op, args))
        if refusal is not None:
            self._reasons[node.output[0]] = refusal
            return None
        if op == "ConstantOfShape":
            fill = attr(node, "value")
            fill_arr = tensor_array(fill) if fill is not None else np.zeros(1, np.float32)
            return np.full([int(d) for d in args[0]], fill_arr.reshape(-1)[0], dtype=fill_arr.dtype)
        if op in _ELEMENTWISE:
            out = _ELEMENTWISE[op](*args)
            return np.asarray(out, dtype=args[0].dtype)
        return np.asarray(_OPS[op](node, args))

    def _input(self, node: onnx.NodeProto, k: int, depth: int) -> np.ndarray | None:
        """The value of input `k` of `node`; a value the budget stopped stops `node` for the same reason."""
        value = self.value(node.input[k], depth + 1)
        why = self.reason(node.input[k]) if value is None else None
        if why is not None:
            self._reasons[node.output[0]] = why
        return value


def _output_elements(op: str, args: Sequence[np.ndarray]) -> int:
    """The elements `op` would produce from `args`, computed from their shapes before anything is allocated."""
    if op == "ConstantOfShape":
        return math.prod(int(d) for d in args[0].reshape(-1))
    if op == "Expand":
        return math.prod(np.broadcast_shapes(args[0].shape, tuple(int(d) for d in args[1].reshape(-1))))
    if op in _ELEMENTWISE:
        return math.prod(np.broadcast_shapes(*(a.shape for a in args)))
    if op == "Concat":
        return sum(a.size for a in args)
    return 0 if op == "Identity" else args[0].size  # Identity is the same array; the rest copy at most their input


def _constant_attr(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return tensor_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None
