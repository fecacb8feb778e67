"""Which nodes are normalizations, which of them are protected, and the invariant that protects them.

BatchNorm with running statistics is a fixed affine map and may be folded. GroupNorm, LayerNorm and
InstanceNorm compute statistics from each input and are never altered; neither are the BatchNorm nodes an
exporter emits for an InstanceNorm with running stats (Reshape to [1, N*C, ...] → BN with statistics tiled
per sample → Reshape; any other BN between Reshapes is a BatchNorm) or for a BatchNorm whose statistics are
computed from its input in the graph (unless that input is a constant: then the whole BN is one).

`classify` is the one classifier: the fold engine's records, `survey` (the counts export reports) and
verify's structure check all take a node's kind from it, in the main graph, in If/Loop/Scan bodies and in
model-local functions (`walk_graphs`).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from foldnorm.errors import InvariantViolation
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.external import tensor_digest
from foldnorm.onnxgraph.graph import GraphIndex, function_graph, is_onnx_op, named_subgraphs, node_label

LAYERNORM_OPS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                 "SkipSimplifiedLayerNormalization", "RMSNormalization"}
GROUPNORM_OPS = {"GroupNormalization", "GroupNorm"}
INSTANCENORM_OPS = {"InstanceNormalization"}


NormKind = Literal["batchnorm", "groupnorm", "layernorm", "instancenorm"]


@dataclass(frozen=True)
class NormInfo:
    """Classification of one normalization node."""

    kind: NormKind
    protected: bool
    reason: str
    chain: tuple[onnx.NodeProto, ...] = ()  # the nodes that belong to it (lowered GroupNorm's Reshape/Mul/Add)


def classify(index: GraphIndex, node: onnx.NodeProto, constants: ConstantResolver) -> NormInfo | None:
    """Classify `node` as a normalization (or return None when it is none)."""
    op = node.op_type
    if op in LAYERNORM_OPS:
        return NormInfo("layernorm", True, "LayerNorm normalizes each sample with its own statistics")
    if op in GROUPNORM_OPS:
        return NormInfo("groupnorm", True, "GroupNorm normalizes each sample with its own statistics")
    if op in INSTANCENORM_OPS:
        producer = index.producer.get(node.input[0])
        if producer is not None and producer.op_type == "Reshape":
            chain = _lowered_groupnorm_tail(index, node)
            return NormInfo("groupnorm", True, "GroupNorm (lowered to InstanceNormalization between Reshapes) "
                            "normalizes each sample with its own statistics", chain)
        return NormInfo("instancenorm", True, "InstanceNorm normalizes each sample with its own statistics")
    if op == "BatchNormalization" and not is_onnx_op(node, op):
        return NormInfo("batchnorm", True, f"{node.domain}.BatchNormalization is a custom op, not the standard "
                        "BatchNormalization; left as it is")
    if op == "BatchNormalization":
        if _tracked_instancenorm(index, node, constants):
            return NormInfo("instancenorm", True, "BatchNormalization between Reshapes stands for an InstanceNorm "
                            "with running statistics (its statistics tiled per sample, its input reshaped to "
                            "[1, N*C, ...]); left as exported")
        x, stats = node.input[0], node.input[3:5]
        if any(constants.value(s) is None and x in index.upstream(s) for s in stats) \
                and constants.value(x) is None:
            return NormInfo("batchnorm", True, "its mean/variance are computed from its input "
                            "(BatchNorm without running statistics); nothing fixed to fold")
        return NormInfo("batchnorm", False, "")
    return None


def _tracked_instancenorm(index: GraphIndex, bn: onnx.NodeProto, constants: ConstantResolver) -> bool:
    """Whether `bn` is the export of an InstanceNorm with running statistics, as torch writes it:
    `Reshape(x, [1, N*C, ...]) -> BatchNormalization(mean, var tiled N times) -> Reshape back`.

    The statistics are tiled by `Tile` nodes, or (constant-folded) hold N copies of their first C values, N and C
    being the static batch and channels of `x`. Anything less is an ordinary BatchNorm between reshapes (LeViT's
    `bn(linear(x).flatten(0, 1))`), which the rules may fold.
    """
    reshape = index.producer.get(bn.input[0])
    consumer = index.only_consumer(bn.output[0])
    if not (reshape is not None and is_onnx_op(reshape, "Reshape") and len(reshape.input) > 1
            and consumer is not None and is_onnx_op(consumer, "Reshape")):
        return False
    if not _leads_with_one(index, reshape.input[1], constants):
        return False
    source = index.shape(reshape.input[0])
    return len(bn.input) == 5 and all(_tiled(index, stat, source, constants) for stat in bn.input[3:5])


def _leads_with_one(index: GraphIndex, target: str, constants: ConstantResolver) -> bool:
    """Whether a Reshape target shape provably starts with 1: a constant, or a Concat whose first piece is one."""
    value = constants.value(target)
    if value is None:
        concat = index.producer.get(target)
        if concat is None or not is_onnx_op(concat, "Concat") or not concat.input:
            return False
        value = constants.value(concat.input[0])
    return value is not None and value.ndim == 1 and value.size > 0 and int(value[0]) == 1


def _tiled(index: GraphIndex, stat: str, source: list[int | str | None] | None,
           constants: ConstantResolver) -> bool:
    """Whether statistic `stat` is tiled per sample: a Tile's output, or N copies of C values (`source`: the
    shape [N, C, ...] of the tensor before the Reshape, when recorded)."""
    producer = index.producer.get(stat)
    if producer is not None and is_onnx_op(producer, "Tile"):
        return True
    value = constants.value(stat)
    if value is None or source is None or len(source) < 2:
        return False
    n, c = source[0], source[1]
    if not (isinstance(n, int) and isinstance(c, int)) or value.size != n * c or c == 0:
        return False
    flat = value.reshape(-1)
    return bool(np.array_equal(flat, np.tile(flat[:c], n)))


def _lowered_groupnorm_tail(index: GraphIndex, node: onnx.NodeProto) -> tuple[onnx.NodeProto, ...]:
    nodes = [node]
    current = node
    for op in ("Reshape", "Mul", "Add"):
        nxt = index.only_consumer(current.output[0])
        if nxt is None or nxt.op_type != op:
            break
        nodes.append(nxt)
        current = nxt
    return tuple(nodes)


def module_path(node: onnx.NodeProto) -> str | None:
    """The source module path recorded by the exporter (dynamo metadata, or a legacy node name)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
            if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
                return None  # not what the exporter writes (a list of module paths)
            scopes = [s for s in value if s]
            scopes = scopes[:-1]
            if not scopes:
                return None
            return scopes[-1] if all(b.startswith(a) for a, b in itertools.pairwise(scopes)) else ".".join(scopes)
    if node.name.startswith("/") and node.name.count("/") > 1:
        return ".".join(node.name.strip("/").split("/")[:-1])
    return None


def _fingerprint(index: GraphIndex, node: onnx.NodeProto) -> str:
    h = hashlib.sha256()
    h.update(f"{node.domain}:{node.op_type}|{list(node.input)}|{list(node.output)}".encode())
    for a in sorted(node.attribute, key=lambda a: a.name):
        h.update(a.SerializeToString())
    for name in node.input:
        tensor = index.initializers.get(name)
        if tensor is not None:
            h.update(tensor_digest(tensor))
    return h.hexdigest()


def classified(index: GraphIndex, constants: ConstantResolver) -> Iterator[tuple[onnx.NodeProto, NormInfo]]:
    """Every normalization node of the graph (not its subgraphs), in graph order, with its classification."""
    for node in index.nodes:
        info = classify(index, node, constants)
        if info is not None:
            yield node, info


def walk_graphs(model: onnx.ModelProto) -> Iterator[tuple[GraphIndex, ConstantResolver]]:
    """Every graph of `model`, each indexed with its constants: the main graph and its If/Loop/Scan bodies
    (which see the weights of the graphs around them), then each model-local function's body and its
    subgraphs. Paths (`GraphIndex.path`) are those of the fold report's `graph` field."""

    def walk(graph: onnx.GraphProto, outer: GraphIndex | None, outer_constants: ConstantResolver | None,
             path: str) -> Iterator[tuple[GraphIndex, ConstantResolver]]:
        index = GraphIndex(graph, outer, path)
        constants = ConstantResolver(index, outer_constants)
        yield index, constants
        for node in index.nodes:
            for sub_path, sub in named_subgraphs(node, path):
                yield from walk(sub, index, constants, sub_path)

    yield from walk(model.graph, None, None, "main")
    for function in model.functions:
        path, body = function_graph(function)
        yield from walk(body, None, None, path)


@dataclass(frozen=True)
class NormCounts:
    """Normalization nodes by kind, as `classify` names them (a lowered GroupNorm is a groupnorm; the
    BatchNormalization standing for an InstanceNorm with running statistics is an instancenorm)."""

    batchnorm: int = 0
    groupnorm: int = 0
    layernorm: int = 0
    instancenorm: int = 0

    @classmethod
    def of(cls, kinds: Iterable[str]) -> NormCounts:
        """Count the normalization kinds among `kinds` (other names, such as "affine", are not counted)."""
        kinds = list(kinds)
        return cls(*(kinds.count(k) for k in ("batchnorm", "groupnorm", "layernorm", "instancenorm")))

    @property
    def protected(self) -> int:
        """GroupNorm, LayerNorm and InstanceNorm nodes: the ones folding must leave intact."""
        return self.groupnorm + self.layernorm + self.instancenorm

    def by_op(self) -> dict[str, int]:
        """The protected counts keyed by the ONNX op each kind stands for (export's `protected` field)."""
        return {"GroupNormalization": self.groupnorm, "LayerNormalization": self.layernorm,
                "InstanceNormalization": self.instancenorm}


def survey(model: onnx.ModelProto) -> NormCounts:
    """Count the normalization nodes of `model` by kind: main graph, subgraphs and model-local functions."""
    return NormCounts.of(info.kind for index, constants in walk_graphs(model)
                         for _, info in classified(index, constants))


def chain_fingerprints(index: GraphIndex, node: onnx.NodeProto, info: NormInfo) -> dict[str, str]:
    """The fingerprints (ops, wiring, attributes, parameter bytes) of a protected node and the nodes of its chain,
    keyed `<graph path>:<output name>`, the node's own key first."""
    return {f"{index.path}:{n.output[0]}": _fingerprint(index, n) for n in info.chain or (node,)}


def protected_fingerprints(index: GraphIndex, constants: ConstantResolver) -> dict[str, str]:
    """A fingerprint (ops, wiring, attributes, parameter bytes) of every protected node of the graph."""
    return {key: fp for node, info in classified(index, constants) if info.protected
            for key, fp in chain_fingerprints(index, node, info).items()}


def protected_parts(index: GraphIndex, constants: ConstantResolver) -> dict[int, str]:
    """The nodes that belong to a protected normalization without being it (a lowered GroupNorm's Reshapes and
    its affine Mul/Add), by `id()`, each with the normalization's label: no rule may fold them or into them."""
    return {id(part): f"{node.op_type} {node_label(node)}" for node, info in classified(index, constants)
            if info.protected for part in info.chain if part is not node}


def check_protected(before: dict[str, str], after: dict[str, str]) -> None:
    """Raise `InvariantViolation` when a protected node disappeared or changed."""
    missing = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    if missing or changed:
        raise InvariantViolation(
            f"protected normalization nodes were altered by folding (missing: {missing[:5]}, "
            f"changed: {changed[:5]}); this is a foldnorm bug, please report it"
        )

