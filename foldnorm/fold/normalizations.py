"""Which nodes are normalizations, which of them are protected, and the invariant that protects them.

BatchNorm with running statistics is a fixed affine map and may be folded. GroupNorm, LayerNorm and
InstanceNorm compute statistics from each input and are never altered; neither are the BatchNorm nodes an
exporter emits for an InstanceNorm with running stats (Reshape → BN → Reshape) or for a BatchNorm whose
statistics are computed in the graph.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
from dataclasses import dataclass

import onnx

from foldnorm.errors import InvariantViolation
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.external import tensor_digest
from foldnorm.onnxgraph.graph import GraphIndex, is_onnx_op

LAYERNORM_OPS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                 "SkipSimplifiedLayerNormalization", "RMSNormalization"}
GROUPNORM_OPS = {"GroupNormalization", "GroupNorm"}
INSTANCENORM_OPS = {"InstanceNormalization"}


@dataclass(frozen=True)
class NormInfo:
    """Classification of one normalization node."""

    kind: str  # "batchnorm", "groupnorm", "layernorm", "instancenorm"
    protected: bool
    reason: str
    chain: tuple[int, ...] = ()  # ids of the nodes that belong to it (lowered GroupNorm's Reshape/Mul/Add)


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
        producer = index.producer.get(node.input[0])
        consumer = index.only_consumer(node.output[0])
        if (producer is not None and producer.op_type == "Reshape" and consumer is not None
                and consumer.op_type == "Reshape"):
            return NormInfo("instancenorm", True, "BatchNormalization between Reshapes stands for an InstanceNorm "
                            "with running statistics; left as exported")
        stats = node.input[3:5]
        if len(stats) == 2 and any(constants.value(s) is None and not index.is_graph_input(s) for s in stats):
            return NormInfo("batchnorm", True, "its mean/variance are computed from the input "
                            "(BatchNorm without running statistics); nothing fixed to fold")
        return NormInfo("batchnorm", False, "")
    return None


def _lowered_groupnorm_tail(index: GraphIndex, node: onnx.NodeProto) -> tuple[int, ...]:
    ids = [id(node)]
    current = node
    for op in ("Reshape", "Mul", "Add"):
        nxt = index.only_consumer(current.output[0])
        if nxt is None or nxt.op_type != op:
            break
        ids.append(id(nxt))
        current = nxt
    return tuple(ids)


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


def protected_groups(index: GraphIndex, constants: ConstantResolver) -> dict[int, dict[str, str]]:
    """Every protected node of the graph by `id()`, with the fingerprints (ops, wiring, attributes, parameter
    bytes) of it and the nodes of its chain, keyed `<graph path>:<output name>`, the node's own key first."""
    groups: dict[int, dict[str, str]] = {}
    by_id = {id(n): n for n in index.nodes}
    for node in index.nodes:
        info = classify(index, node, constants)
        if info is None or not info.protected:
            continue
        members = (by_id[m] for m in (info.chain or (id(node),)))
        groups[id(node)] = {f"{index.path}:{n.output[0]}": _fingerprint(index, n) for n in members}
    return groups


def protected_fingerprints(index: GraphIndex, constants: ConstantResolver) -> dict[str, str]:
    """A fingerprint (ops, wiring, attributes, parameter bytes) of every protected node of the graph."""
    return {key: fp for group in protected_groups(index, constants).values() for key, fp in group.items()}


def check_protected(before: dict[str, str], after: dict[str, str]) -> None:
    """Raise `InvariantViolation` when a protected node disappeared or changed."""
    missing = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    if missing or changed:
        raise InvariantViolation(
            f"protected normalization nodes were altered by folding (missing: {missing[:5]}, "
            f"changed: {changed[:5]}); this is a foldnorm bug, please report it"
        )

