"""The fold engine: visit every normalization node, fold what can be folded, record why the rest stays."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from foldnorm.bn_math import batchnorm_affine
from foldnorm.constants import ConstantResolver
from foldnorm.errors import InvalidModelError
from foldnorm.graph import GraphIndex, attr, node_label
from foldnorm.modelio import ModelLike, load_model
from foldnorm.normalizations import check_protected, classify, module_path, protected_fingerprints
from foldnorm.passes import DEFAULT_PASSES, BatchNormParams, BatchNormPass, FoldContext, FoldOptions, Plan
from foldnorm.report import FoldRecord, FoldReport

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
) -> FoldResult:
    """Fold every foldable BatchNormalization of `source` (a path or `ModelProto`; never modified).

    Returns a new model and a report with one record per normalization node. Protected normalizations
    (GroupNorm, LayerNorm, InstanceNorm) are checked to be unchanged; a change raises `InvariantViolation`.
    """
    # A model read from a path is ours to edit; a caller's ModelProto is copied first.
    model = copy.deepcopy(source) if isinstance(source, onnx.ModelProto) else load_model(source)
    opts = options or FoldOptions()
    report = FoldReport()
    _fold_graph(model.graph, None, None, "main", opts, passes, report)
    return FoldResult(model, report)


def _fold_graph(
    graph: onnx.GraphProto,
    outer_index: GraphIndex | None,
    outer_constants: ConstantResolver | None,
    path: str,
    options: FoldOptions,
    passes: Sequence[BatchNormPass],
    report: FoldReport,
) -> None:
    index = GraphIndex(graph, outer_index, path)
    constants = ConstantResolver(index, outer_constants)
    before = protected_fingerprints(index, constants)
    ctx = FoldContext(index, constants, options)
    for node in list(index.nodes):
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            report.add(_visit_batchnorm(ctx, node, passes))
        elif (info := classify(index, node, constants)) is not None:
            report.add(_record(node, info.kind, "kept", info.reason, path=path))
    index.commit()
    check_protected(before, protected_fingerprints(index, ConstantResolver(index, outer_constants)))
    for node in index.nodes:
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for k, sub in enumerate(subs):
                sub_path = f"{path}/{node_label(node)}.{a.name}" + (f"[{k}]" if len(subs) > 1 else "")
                _fold_graph(sub, index, constants, sub_path, options, passes, report)


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
    params = _batchnorm_params(ctx, bn)
    if isinstance(params, str):
        return _record(bn, "batchnorm", "skipped", params, path=path)
    reasons: list[str] = []  # sentences from fold rules that applied but refused
    context: list[str] = []  # why no rule applied at all
    producer = index.producer.get(bn.input[0])
    if producer is None:
        context.append("its input is a graph input")
    elif not (after := [p for p in passes if p.position == "after" and producer.op_type in p.op_types]):
        context.append(f"its input comes from {producer.op_type} {node_label(producer)}, which is not linear")
    elif index.uses(producer.output[0]) > 1 or producer.output[0] in index.graph_outputs:
        reasons.append(_fanout_reason(index, producer))
    elif (plan := _first_plan(ctx, bn, producer, params, after, reasons)) is not None:
        return _apply(bn, plan, path)
    consumer = index.only_consumer(bn.output[0])
    before = [p for p in passes if p.position == "before" and consumer is not None and consumer.op_type in p.op_types]
    if consumer is not None and before:
        plan = _first_plan(ctx, bn, consumer, params, before, reasons)
        if plan is not None:
            return _apply(bn, plan, path)
    if reasons:
        return _record(bn, "batchnorm", "skipped", "; ".join(reasons), path=path)
    return _record(bn, "batchnorm", "kept", "standalone: " + "; ".join(context) + ", and nothing after it "
                   "takes a fold", path=path)


def _first_plan(ctx: FoldContext, bn: onnx.NodeProto, neighbour: onnx.NodeProto, params: BatchNormParams,
                candidates: Sequence[BatchNormPass], reasons: list[str]) -> Plan | None:
    for p in candidates:
        verdict = p.check(ctx, bn, neighbour, params)
        if isinstance(verdict, Plan):
            return verdict
        reasons.append(verdict)
    return None


def _apply(bn: onnx.NodeProto, plan: Plan, path: str) -> FoldRecord:
    record = _record(bn, "batchnorm", "folded", plan.note or f"folded into {plan.target.op_type}",
                     path=path, target=plan.target)
    plan.apply()
    log.debug("folded %s into %s", node_label(bn), node_label(plan.target))
    return record


def _fanout_reason(index: GraphIndex, producer: onnx.NodeProto) -> str:
    out = producer.output[0]
    if out in index.graph_outputs:
        return f"the output of {producer.op_type} {node_label(producer)} is also a graph output"
    return (f"the output of {producer.op_type} {node_label(producer)} is also read by "
            f"{index.uses(out) - 1} other node(s)")


def _batchnorm_params(ctx: FoldContext, bn: onnx.NodeProto) -> BatchNormParams | str:
    if attr(bn, "training_mode", 0):
        return "training_mode=1: the node computes batch statistics"
    if attr(bn, "spatial", 1) == 0:
        return "spatial=0 (BatchNormalization-7 and older): per-element statistics are not supported"
    if len([o for o in bn.output if o]) > 1:
        return "the node also outputs running statistics (training graph)"
    values = []
    for role, name in zip(("scale", "bias", "mean", "var"), bn.input[1:5]):
        value = ctx.constant(name)
        if value is None:
            where = "a graph input" if ctx.index.is_graph_input(name) else "computed at run time"
            return f"its {role} {name!r} is {where}, not a constant"
        values.append(value)
    sizes = {v.size for v in values}
    if len(sizes) != 1:
        raise InvalidModelError(
            f"BatchNormalization {node_label(bn)} has parameters of different lengths "
            f"{[v.size for v in values]}; fix the model (re-export it) before folding."
        )
    eps = float(attr(bn, "epsilon", 1e-5))
    affine = batchnorm_affine(values[0], values[1], values[2], values[3], eps)
    if not (np.all(np.isfinite(affine.scale)) and np.all(np.isfinite(affine.shift))):
        return "its scale or shift is not finite (a zero variance with eps = 0?)"
    return BatchNormParams(affine, values[0].dtype)
