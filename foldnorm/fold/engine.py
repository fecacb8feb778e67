"""The fold engine: visit every normalization node, fold what can be folded, record why the rest stays.

Nodes are visited in graph order, so chains fold one link at a time (Conv → BN → BN: the first BN folds into
the Conv, which then produces the second BN's input). Per-channel Mul/Add/Sub/Div with a constant are folded
the same way when a linear producer precedes them. If/Loop/Scan bodies and model-local functions are folded
too; weights from an enclosing graph are copied into the subgraph, never edited.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from foldnorm.fold.normalizations import check_protected, classify, module_path, protected_fingerprints
from foldnorm.fold.report import FoldRecord, FoldReport
from foldnorm.fold.rules import DEFAULT_PASSES, BatchNormPass, ChannelParams, FoldContext, FoldOptions, Plan
from foldnorm.fold.rules.affine_tail import affine_operand, affine_params
from foldnorm.fold.rules.base import shape_readers
from foldnorm.fold.rules.bn_affine import lower_to_affine
from foldnorm.fold.rules.common import batchnorm_params
from foldnorm.fold.rules.matmul_bn import bias_add_parts
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, attribute_refs, is_onnx_op, node_label, subgraphs
from foldnorm.onnxgraph.modelio import ModelLike, load_model, validate_model

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """The folded model and the report of every normalization node."""

    model: onnx.ModelProto
    report: FoldReport


def fold_model(
    source: ModelLike,
    *,
    options: FoldOptions | None = None,
    passes: Sequence[BatchNormPass] = DEFAULT_PASSES,
    in_place: bool = False,
) -> FoldResult:
    """Fold every foldable BatchNormalization of `source` (a path or `ModelProto`; never modified).

    Returns a new model and a report with one record per normalization node (and per folded or refused
    per-channel Mul/Add/Sub/Div after a linear op). Protected normalizations (GroupNorm, LayerNorm,
    InstanceNorm) are checked to be unchanged; a change raises `InvariantViolation`. `in_place=True` edits a
    given `ModelProto` itself instead of a copy (for a caller that hands the model over: no copy of the weights).
    """
    # A model read from a path is ours to edit; a caller's ModelProto is copied first unless handed over.
    if isinstance(source, onnx.ModelProto):
        validate_model(source, "the model")  # opset (BN-6 and older default to training mode), tensors, shapes
        model = source if in_place else copy.deepcopy(source)
    else:
        model = load_model(source)
    opts = options or FoldOptions()
    report = FoldReport()
    _fold_graph(model.graph, None, None, "main", opts, passes, report, model)
    for function in model.functions:
        _fold_function(function, opts, passes, report)
    if model.ir_version < 4:
        _initializers_to_constants(model.graph)
    return FoldResult(model, report)


def inspect_model(source: ModelLike, *, options: FoldOptions | None = None) -> FoldReport:
    """What `fold_model` would do to `source`, without writing anything: the report of a fold run on a copy.

    `folded` in the report means "can be folded"; `skipped` and `kept` carry the reason.
    """
    return fold_model(source, options=options).report


def _fold_graph(
    graph: onnx.GraphProto,
    outer_index: GraphIndex | None,
    outer_constants: ConstantResolver | None,
    path: str,
    options: FoldOptions,
    passes: Sequence[BatchNormPass],
    report: FoldReport,
    model: onnx.ModelProto | None = None,
) -> None:
    index = GraphIndex(graph, outer_index, path)
    constants = ConstantResolver(index, outer_constants)
    before = protected_fingerprints(index, constants)
    ctx = FoldContext(index, constants, options, model=model)
    for node in list(index.nodes):
        if index.is_removed(node):
            continue
        if is_onnx_op(node, "BatchNormalization"):
            report.add(_visit_batchnorm(ctx, node, passes))
        elif (info := classify(index, node, constants)) is not None:
            report.add(_record(node, info.kind, "kept", info.reason, path=path))
        elif (record := _visit_affine(ctx, node, passes)) is not None:
            report.add(record)
    index.commit()
    check_protected(before, protected_fingerprints(index, ConstantResolver(index, outer_constants)))
    for node in index.nodes:
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for k, sub in enumerate(subs):
                sub_path = f"{path}/{node_label(node)}.{a.name}" + (f"[{k}]" if len(subs) > 1 else "")
                _fold_graph(sub, index, constants, sub_path, options, passes, report)


def _fold_function(function: onnx.FunctionProto, options: FoldOptions, passes: Sequence[BatchNormPass],
                   report: FoldReport) -> None:
    """Fold inside a model-local function: its body is folded as a graph; new tensors become Constant nodes."""
    graph = helper.make_graph(list(function.node), function.name,
                              [helper.make_empty_tensor_value_info(n) for n in function.input],
                              [helper.make_empty_tensor_value_info(n) for n in function.output])
    folded_before = report.folded
    _fold_graph(graph, None, None, f"function {function.domain}.{function.name}", options, passes, report)
    if report.folded == folded_before:
        return
    del function.node[:]
    function.node.extend([*_constant_nodes(graph.initializer), *graph.node])


def _constant_nodes(tensors: Iterable[onnx.TensorProto]) -> list[onnx.NodeProto]:
    return [helper.make_node("Constant", [], [t.name], value=t) for t in tensors]


def _initializers_to_constants(graph: onnx.GraphProto) -> None:
    """IR 3 wants every initializer listed as a graph input: the tensors folding added become Constant nodes."""
    inputs = {i.name for i in graph.input}
    added = [t for t in graph.initializer if t.name not in inputs]
    if added:
        kept = [t for t in graph.initializer if t.name in inputs]
        nodes = [*_constant_nodes(added), *graph.node]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.node[:]
        graph.node.extend(nodes)
    for node in graph.node:
        for sub in subgraphs(node):
            _initializers_to_constants(sub)


def _record(node: onnx.NodeProto, kind: str, outcome: str, reason: str, *, path: str,
            target: onnx.NodeProto | None = None) -> FoldRecord:
    return FoldRecord(
        op_type=node.op_type,
        node=node_label(node),
        kind=kind,
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,
        target=node_label(target) if target is not None else None,
        module=module_path(node),
        graph=path,
    )


def _visit_batchnorm(ctx: FoldContext, bn: onnx.NodeProto, passes: Sequence[BatchNormPass]) -> FoldRecord:
    index = ctx.index
    path = index.path
    info = classify(index, bn, ctx.constants)
    if info is not None and info.protected:
        return _record(bn, info.kind, "kept", info.reason, path=path)
    params = _opaque_reason(bn) or batchnorm_params(ctx, bn)
    if isinstance(params, str):
        return _record(bn, "batchnorm", "skipped", params, path=path)
    reasons: list[str] = []  # sentences from fold rules that applied but refused
    context: list[str] = []  # why no rule applied at all
    producer = index.producer.get(bn.input[0])
    plan = _fold_after(ctx, bn, producer, params, passes, reasons, context)
    if plan is not None:
        return _apply(ctx, bn, "batchnorm", plan)
    consumer = index.only_consumer(bn.output[0])
    if consumer is not None:
        plan = _first_plan(ctx, bn, consumer, params, _passes_for(ctx, consumer, passes, "before"), reasons)
        if plan is not None:
            return _apply(ctx, bn, "batchnorm", plan)
    why = "; ".join(reasons) if reasons else \
        "standalone: " + "; ".join(context) + ", and nothing after it takes a fold"
    if ctx.options.standalone_bn == "affine":
        lowered = lower_to_affine(ctx, bn, params)
        if isinstance(lowered, Plan):
            lowered.note = f"{lowered.note} (not folded: {why})"
            return _apply(ctx, bn, "batchnorm", lowered)
        why = f"{why}; {lowered}"
    return _record(bn, "batchnorm", "skipped" if reasons else "kept", why, path=path)


def _visit_affine(ctx: FoldContext, node: onnx.NodeProto, passes: Sequence[BatchNormPass]) -> FoldRecord | None:
    """Fold a per-channel Mul/Add/Sub/Div with a constant into the linear op before it (None: not a candidate)."""
    operand = affine_operand(ctx, node)
    if operand is None:
        return None
    data, constant, const_index = operand
    producer = ctx.index.producer.get(data)
    if producer is None or (node.op_type in ("Add", "Sub") and is_onnx_op(producer, "MatMul")):
        return None  # an Add right after a MatMul is that MatMul's bias, not a tail to fold
    if not _passes_for(ctx, producer, passes, "after") or not _has_constant_weight(ctx, producer):
        return None  # e.g. attention's MatMul(Q, K) / sqrt(d): nothing fixed to fold into, nothing to report
    if ctx.index.only_consumer(producer.output[0]) is not node:
        return None  # the producer's output is read elsewhere too (GELU's x * ... / sqrt(2)): not a tail
    params = affine_params(node, constant, const_index)
    if isinstance(params, str):
        return _record(node, "affine", "skipped", params, path=ctx.index.path)
    reasons: list[str] = []
    plan = _fold_after(ctx, node, producer, params, passes, reasons, [])
    if plan is not None:
        return _apply(ctx, node, "affine", plan)
    return _record(node, "affine", "skipped", "; ".join(reasons), path=ctx.index.path)


def _has_constant_weight(ctx: FoldContext, producer: onnx.NodeProto) -> bool:
    if producer.op_type == "Add":  # a MatMul's bias Add: the weight is the MatMul's
        parts = bias_add_parts(ctx, producer)
        producer = parts[0] if parts is not None else producer
    return len(producer.input) > 1 and ctx.constant(producer.input[1]) is not None


def _passes_for(ctx: FoldContext, neighbour: onnx.NodeProto, passes: Sequence[BatchNormPass],
                position: str) -> list[BatchNormPass]:
    return [p for p in passes if p.position == position and is_onnx_op(neighbour, *p.op_types)
            and p.accepts(ctx, neighbour)]


def _fold_after(ctx: FoldContext, node: onnx.NodeProto, producer: onnx.NodeProto | None, params: ChannelParams,
                passes: Sequence[BatchNormPass], reasons: list[str], context: list[str]) -> Plan | None:
    """Try the passes that fold `node` into the `producer` of its input."""
    index = ctx.index
    if producer is None:
        context.append("its input is a graph input" if index.is_graph_input(node.input[0])
                       else "its input is computed in an enclosing graph")
        return None
    after = _passes_for(ctx, producer, passes, "after")
    if not after:
        op = producer.op_type if is_onnx_op(producer, producer.op_type) else f"{producer.domain}.{producer.op_type}"
        context.append(f"its input comes from {op} {node_label(producer)}, which is not linear")
        return None
    if index.uses(producer.output[0]) - len(shape_readers(index, producer.output[0])) > 1 \
            or producer.output[0] in index.graph_outputs:
        reasons.append(_fanout_reason(index, producer))
        return None
    return _first_plan(ctx, node, producer, params, after, reasons)


def _first_plan(ctx: FoldContext, node: onnx.NodeProto, neighbour: onnx.NodeProto, params: ChannelParams,
                candidates: Sequence[BatchNormPass], reasons: list[str]) -> Plan | None:
    opaque = _opaque_reason(neighbour)
    if opaque and candidates:
        reasons.append(f"{neighbour.op_type} {node_label(neighbour)}: {opaque}")
        return None
    for p in candidates:
        verdict = p.check(ctx, node, neighbour, params)
        if isinstance(verdict, Plan):
            return verdict
        reasons.append(verdict)
    return None


def _opaque_reason(node: onnx.NodeProto) -> str | None:
    refs = attribute_refs(node)
    if not refs:
        return None
    return (f"its attributes {', '.join(refs)} refer to attributes of the enclosing function, "
            "whose values are known only per call")


def _apply(ctx: FoldContext, node: onnx.NodeProto, kind: str, plan: Plan) -> FoldRecord:
    ctx.notes.clear()
    plan.apply()
    reason = "; ".join([plan.note or f"folded into {plan.target.op_type}", *ctx.notes])
    log.debug("folded %s into %s", node_label(node), node_label(plan.target))
    return _record(node, kind, "folded", reason, path=ctx.index.path, target=plan.target)


def _fanout_reason(index: GraphIndex, producer: onnx.NodeProto) -> str:
    out = producer.output[0]
    if out in index.graph_outputs:
        return f"the output of {producer.op_type} {node_label(producer)} is also a graph output"
    return (f"the output of {producer.op_type} {node_label(producer)} is also read by "
            f"{index.uses(out) - len(shape_readers(index, out)) - 1} other node(s)")
