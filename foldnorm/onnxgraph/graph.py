"""A mutable index over one ONNX graph: who produces and who consumes each value, and safe edits.

The fold rules work on the protobuf directly (node metadata, doc strings, subgraphs and functions stay as
they are). Structural edits are recorded here and applied once by `commit()`.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from foldnorm.onnxgraph.external import is_on_disk, tensor_array
from foldnorm.onnxgraph.memory import release_freed_memory
from foldnorm.onnxgraph.store import TensorStore, is_matrix, stand_in


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute `name` of `node` (ints, floats, strings, lists), or `default`."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def is_onnx_op(node: onnx.NodeProto, *op_types: str) -> bool:
    """Whether `node` is one of the standard ONNX ops `op_types` (default domain; a custom domain may reuse
    the name for something else, e.g. a model-local function `local.Conv` that adds a Relu)."""
    return node.op_type in op_types and node.domain in ("", "ai.onnx")


def legacy_broadcast(node: onnx.NodeProto) -> bool:
    """Whether `node` broadcasts the way element-wise ops did before opset 7 (Add/Sub/Mul/Div-6 and older with
    `broadcast=1`: the second operand aligned with the first from `axis`), not numpy's way."""
    return is_onnx_op(node, "Add", "Sub", "Mul", "Div") and bool(attr(node, "broadcast", 0))


def attribute_refs(node: onnx.NodeProto) -> list[str]:
    """Attributes of `node` that refer to an attribute of the enclosing function (`<epsilon: float = @eps>`).

    Their values are known only per call of the function, so such a node is opaque to folding.
    """
    return [f"{a.name}=@{a.ref_attr_name}" for a in node.attribute if a.ref_attr_name]


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    """Set (or replace) attribute `name` on `node`."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def node_label(node: onnx.NodeProto) -> str:
    """The node's name, or its first output when it has none."""
    return node.name or (node.output[0] if node.output else f"<{node.op_type}>")


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held by a node's attributes (If branches, Loop/Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def named_subgraphs(node: onnx.NodeProto, path: str) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graphs held by a node's attributes, each with its path below the enclosing graph's `path`
    (`main/If_0.then_branch`, `main/Loop_1.body`; `[k]` numbers the graphs of a GRAPHS attribute)."""
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for k, sub in enumerate(subs):
            yield f"{path}/{node_label(node)}.{a.name}" + (f"[{k}]" if len(subs) > 1 else ""), sub


def function_graph(function: onnx.FunctionProto) -> tuple[str, onnx.GraphProto]:
    """A model-local function's body as a graph of its own (formal inputs and outputs without types), and its
    path (`function <domain>.<name>`)."""
    graph = helper.make_graph(list(function.node), function.name,
                              [helper.make_empty_tensor_value_info(n) for n in function.input],
                              [helper.make_empty_tensor_value_info(n) for n in function.output])
    return f"function {function.domain}.{function.name}", graph


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(o for o in node.output if o)
        used.update(i for i in node.input if i)
        for sub in subgraphs(node):
            used |= free_names(sub)
    used.update(o.name for o in graph.output)
    return used - defined


def _defined_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a graph and its subgraphs define."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(o for o in node.output if o)
        for sub in subgraphs(node):
            names |= _defined_names(sub)
    return names


class GraphIndex:
    """Producers, consumers, initializers and types of one graph, with an optional enclosing scope."""

    def __init__(self, graph: onnx.GraphProto, outer: GraphIndex | None = None, path: str = "main",
                 store: TensorStore | None = None) -> None:
        self.graph = graph
        self.outer = outer
        self.path = path
        #: where big tensors this index writes go instead of the message (None: into the message).
        self.store = store
        self._build()

    def _build(self) -> None:
        graph = self.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            self._link(node)
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            self.types[vi.name] = vi.type
        self._removed_nodes: set[int] = set()
        self._removed_inits: set[str] = set()
        self._inserted: dict[int, list[onnx.NodeProto]] = {}
        self._names: set[str] | None = None

    # ---- reading -------------------------------------------------------------------------------------
    def _link(self, node: onnx.NodeProto) -> None:
        for out in node.output:
            if out:
                self.producer[out] = node
        for inp in node.input:
            if inp:
                self.consumers[inp].append(node)
        for sub in subgraphs(node):
            for name in free_names(sub):
                self.consumers[name].append(node)

    def _unlink(self, node: onnx.NodeProto) -> None:
        for out in node.output:
            if out and self.producer.get(out) is node:
                del self.producer[out]
        names = [i for i in node.input if i]
        for sub in subgraphs(node):
            names.extend(free_names(sub))
        for name in names:
            users = self.consumers.get(name)
            if users:
                for k, user in enumerate(users):
                    if user is node:
                        del users[k]
                        break

    def tensor_value(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The value of an initializer of this graph: read (from its file when it is kept on disk), or, for a
        weight kept on disk when the store keeps no values (`inspect`), a zero stand-in of its shape and type."""
        if self.store is not None and not self.store.values and is_on_disk(tensor) and is_matrix(tensor.dims):
            return stand_in(tensor)
        return tensor_array(tensor)

    def uses(self, name: str) -> int:
        """How many nodes read `name` in this graph, plus one if it is a graph output."""
        return len(self.consumers.get(name, ())) + (1 if name in self.graph_outputs else 0)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The single node reading `name`, or None if it has several readers or is a graph output."""
        users = self.consumers.get(name, ())
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None

    def local_initializer(self, name: str) -> onnx.TensorProto | None:
        """The initializer `name` of this graph when it is a true constant (not overridable as an input)."""
        tensor = self.initializers.get(name)
        if tensor is None or name in self.graph_inputs:
            return None
        return tensor

    def upstream(self, name: str) -> Iterator[str]:
        """`name` and every value it is computed from in this graph, each once (producers' inputs, depth first)."""
        pending, seen = [name], set()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            yield current
            producer = self.producer.get(current)
            if producer is not None:
                pending.extend(i for i in producer.input if i)

    def is_graph_input(self, name: str) -> bool:
        """Whether `name` is fed from outside (an input of this or an enclosing graph, not produced here)."""
        scope: GraphIndex | None = self
        while scope is not None:
            if name in scope.graph_inputs:
                return True
            if name in scope.producer or name in scope.initializers:
                return False
            scope = scope.outer
        return False

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of a value, when the graph records it."""
        scope: GraphIndex | None = self
        while scope is not None:
            if name in scope.initializers:
                return scope.initializers[name].data_type
            t = scope.types.get(name)
            if t is not None and t.HasField("tensor_type"):
                return t.tensor_type.elem_type
            producer = scope.producer.get(name)
            if producer is not None and producer.op_type == "Constant" and not attribute_refs(producer):
                value = attr(producer, "value")
                if isinstance(value, onnx.TensorProto):
                    return value.data_type
            if name in scope.producer or name in scope.graph_inputs:
                return None
            scope = scope.outer
        return None

    def shape(self, name: str) -> list[int | str | None] | None:
        """The recorded shape of a value (ints, symbolic names or None per dim), when known."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return self.outer.shape(name) if self.outer and name not in self.producer else None
        dims: list[int | str | None] = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return dims

    # ---- names ---------------------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        """A value name not used in this graph, its enclosing graphs or its subgraphs (no shadowing),
        derived deterministically from `base`."""
        if self._names is None:
            names = set(self.initializers)  # (filled in place: no intermediate sets of every name)
            names.update(self.producer, self.consumers, self.graph_inputs, self.graph_outputs)
            for node in self.nodes:
                for sub in subgraphs(node):
                    names.update(_defined_names(sub))
            scope = self.outer
            while scope is not None:
                names.update(_defined_names(scope.graph))
                scope = scope.outer
            self._names = names
        candidate, k = base, 1
        while candidate in self._names:
            candidate = f"{base}_{k}"
            k += 1
        self._names.add(candidate)
        return candidate

    # ---- editing -------------------------------------------------------------------------------------
    def set_input(self, node: onnx.NodeProto, index: int, name: str) -> None:
        """Point input `index` of `node` at `name` (appending empty inputs if needed)."""
        while len(node.input) <= index:
            node.input.append("")
        old = node.input[index]
        if old:
            users = self.consumers.get(old, [])
            for k, user in enumerate(users):
                if user is node:
                    del users[k]
                    break
        node.input[index] = name
        if name:
            self.consumers[name].append(node)

    def set_output(self, node: onnx.NodeProto, index: int, name: str) -> None:
        """Rename output `index` of `node` to `name`; the old name's value_info is dropped."""
        old = node.output[index]
        if self.producer.get(old) is node:
            del self.producer[old]
        self.types.pop(old, None)
        node.output[index] = name
        self.producer[name] = node

    def remove_node(self, node: onnx.NodeProto) -> None:
        """Drop `node` from the graph (applied at `commit`)."""
        self._unlink(node)
        self._removed_nodes.add(id(node))

    def is_removed(self, node: onnx.NodeProto) -> bool:
        """Whether `node` was removed since the last `commit`."""
        return id(node) in self._removed_nodes

    def insert_before(self, anchor: onnx.NodeProto, new_nodes: Iterable[onnx.NodeProto]) -> None:
        """Insert `new_nodes` just before `anchor` (applied at `commit`; `anchor` may itself be an inserted node,
        and an inserted node removed again before the commit never reaches the graph)."""
        fresh = list(new_nodes)
        self._inserted.setdefault(id(anchor), []).extend(fresh)
        for node in fresh:
            self._link(node)

    def add_initializer(self, base_name: str, array: np.ndarray) -> str:
        """Add a new initializer holding `array` under a fresh name derived from `base_name`."""
        name = self.fresh_name(base_name)
        tensor = self.graph.initializer.add()
        if self.store is not None and self.store.takes(array):
            tensor.name = name
            self.store.put(tensor, array)
        else:
            tensor.CopyFrom(numpy_helper.from_array(array, name))
        self.initializers[name] = tensor
        return name

    def overwrite_initializer(self, name: str, array: np.ndarray) -> None:
        """Replace the contents of a local initializer that nothing else reads."""
        tensor = self.initializers[name]
        if self.store is not None and self.store.takes(array):
            self.store.put(tensor, array)
            return
        same = (tensor.data_location != onnx.TensorProto.EXTERNAL and list(tensor.dims) == list(array.shape)
                and tensor.data_type == onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
                and array.dtype.itemsize in (2, 4, 8) and sys.byteorder == "little")
        if not same:
            tensor.CopyFrom(numpy_helper.from_array(array, name))
            return
        for typed in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(typed)  # raw bytes are written in place: one copy fewer for big weights
        tensor.raw_data = np.ascontiguousarray(array).tobytes()

    def remove_if_dead(self, names: Iterable[str]) -> None:
        """Remove initializers and constant-only producer chains behind `names` that nothing reads any more."""
        pending = [n for n in names if n]
        while pending:
            name = pending.pop()
            if self.uses(name) or name in self.graph_inputs:
                continue
            if name in self.initializers:
                del self.initializers[name]
                self._removed_inits.add(name)
                continue
            node = self.producer.get(name)
            if node is None or any(self.uses(o) for o in node.output if o):
                continue
            if any(True for _ in subgraphs(node)):
                continue
            inputs = [i for i in node.input if i]
            self.remove_node(node)
            pending.extend(inputs)

    def _placed(self, node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
        """`node` preceded by the nodes inserted before it, and those by the nodes inserted before them."""
        for new in self._inserted.get(id(node), ()):
            yield from self._placed(new)
        yield node

    def commit(self) -> None:
        """Apply recorded removals and insertions to the protobuf graph, then re-index it."""
        graph = self.graph
        if self._removed_inits:
            for i in reversed(range(len(graph.initializer))):
                if graph.initializer[i].name in self._removed_inits:
                    del graph.initializer[i]
        if self._removed_nodes or self._inserted:
            ordered = [n for node in self.nodes for n in self._placed(node) if id(n) not in self._removed_nodes]
            del graph.node[:]  # (the messages of `ordered` stay valid, detached from the graph)
            graph.node.extend(ordered)
            del ordered  # (the graph holds its own copies now)
            if graph.value_info:
                live = {o for n in graph.node for o in n.output}
                for i in reversed(range(len(graph.value_info))):
                    if graph.value_info[i].name not in live:
                        del graph.value_info[i]
                del live
            release_freed_memory()  # what the edits freed: the new index would stack on it
        self._build()
