"""The fold engine: visit every normalization node, fold what the rules fold, record why the rest stays.

The engine knows rules only through the registry (`foldnorm.fold.rules.RULES`) and the contract in
`rules/base.py`. A BatchNormalization is offered to the "after" rules for the producer of its input, then to
the "before" rules for the consumer of its output, then to the "alone" rules; a node a "subject" rule
recognises (a per-channel Mul/Add/Sub/Div by a constant) to the "after" rules when it sits alone after an op
they fold into, else to the "before" rules when an op they fold into reads it alone. Neighbour rules see only
the kinds of subject they declare. The first plan is applied and every refusal's sentence goes into the
record. A rule turned off by `FoldOptions.skip`/`only` is not asked; the record says it is off.

Before that visit, every node is offered, in graph order, to the "block" rules, which rewrite a block of nodes
ending at it (a sum of parallel branches) into one op; the normalization nodes such a block absorbs are reported
as folded with the block's sentence, each record at its node's place in graph order.

Nodes are visited in graph order, so chains fold one link at a time (Conv → BN → BN: the first BN folds into
the Conv, which then produces the second BN's input). If/Loop/Scan bodies and model-local functions are folded
too; weights from an enclosing graph are copied into the subgraph, never edited. After each graph the engine
checks its declared post-conditions (`POST_CONDITIONS`); a failure is a foldnorm bug and raises.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import onnx
from onnx import helper

from foldnorm.fold.context import FoldContext
from foldnorm.fold.normalizations import (
    check_protected,
    classify,
    module_path,
    protected_fingerprints,
    protected_parts,
)
from foldnorm.fold.options import FoldOptions
from foldnorm.fold.report import FoldRecord, FoldReport, Outcome
from foldnorm.fold.rules import (
    RULES,
    AloneRule,
    BlockRule,
    ChannelParams,
    NeighbourRule,
    Plan,
    Refusal,
    Rule,
    SubjectRule,
    batchnorm_params,
)
from foldnorm.onnxgraph import initializer_inputs
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.edits import shape_readers, value_reader
from foldnorm.onnxgraph.external import data_files
from foldnorm.onnxgraph.graph import (
    GraphIndex,
    attribute_refs,
    function_graph,
    is_onnx_op,
    named_subgraphs,
    node_label,
    subgraphs,
)
from foldnorm.onnxgraph.modelio import ModelLike, default_opset, load_model, read_weights, validate_model
from foldnorm.onnxgraph.stats import model_stats, stored_bytes
from foldnorm.onnxgraph.store import TensorStore

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Rule)
_BLOCK = [r for r in RULES if isinstance(r, BlockRule)]
_SUBJECT = [r for r in RULES if isinstance(r, SubjectRule)]
_AFTER = [r for r in RULES if isinstance(r, NeighbourRule) and r.position == "after"]
_BEFORE = [r for r in RULES if isinstance(r, NeighbourRule) and r.position == "before"]
_ALONE = [r for r in RULES if isinstance(r, AloneRule)]


@dataclass(frozen=True)
class PostCondition:
    """A property every folded graph keeps: `check(snapshot before, snapshot after)` raises when it broke."""

    snapshot: Callable[[GraphIndex, ConstantResolver], Any]
    check: Callable[[Any, Any], None]


#: What the engine checks after folding each graph: GroupNorm, LayerNorm and InstanceNorm (and the BNs that
#: stand for them) keep their op, wiring, attributes and parameter bytes. (The tests add `onnx.checker`.)
POST_CONDITIONS: tuple[PostCondition, ...] = (PostCondition(protected_fingerprints, check_protected),)


@dataclass
class FoldResult:
    """The folded model and the report of every normalization node."""

    model: onnx.ModelProto
    report: FoldReport


def fold_model(
    source: ModelLike,
    *,
    options: FoldOptions | None = None,
    in_place: bool = False,
    store: TensorStore | None = None,
) -> FoldResult:
    """Fold every foldable BatchNormalization of `source` (a path or `ModelProto`; never modified).

    Returns a new model and a report with one record per normalization node (and per folded or refused
    per-channel Mul/Add/Sub/Div after a linear op). Protected normalizations (GroupNorm, LayerNorm,
    InstanceNorm) are checked to be unchanged; a change raises `InvariantViolation`. `in_place=True` edits a
    given `ModelProto` itself instead of a copy (for a caller that hands the model over: no copy of the weights).
    With a `store`, the big tensors the fold writes into the main graph go there instead of the message
    (`foldnorm.onnxgraph.store`); the returned model can then be read and written while the store is open.
    """
    # A model read from a path is ours to edit; a caller's ModelProto is copied first unless handed over.
    if isinstance(source, onnx.ModelProto):
        validate_model(source, "the model")  # opset, tensors, shapes
        model = source if in_place else copy.deepcopy(source)
        size = None
    else:
        model = load_model(source, keep_weights_on_disk=True)
        size = stored_bytes(source, data_files(model))
        read_weights(model, source)
    opts = options or FoldOptions()
    report = FoldReport(before=model_stats(model, size))
    detached = _constant_inputs(model, opts, report)
    opset = default_opset(model.opset_import)
    # (IR 3 turns new initializers into Constant nodes, which must hold their values.)
    _fold_graph(model.graph, None, None, "main", opts, report, opset, model,
                store if model.ir_version >= 4 else None)
    for function in model.functions:
        _fold_function(function, opts, report, default_opset([*function.opset_import, *model.opset_import]))
    if model.ir_version < 4:
        if detached is not None:
            initializer_inputs.relist(model.graph, detached)
        _initializers_to_constants(model.graph)
    report.after = model_stats(model)
    return FoldResult(model, report)


def _constant_inputs(model: onnx.ModelProto, options: FoldOptions,
                     report: FoldReport) -> initializer_inputs.DetachedInputs | None:
    """Below IR 4 (as ONNX Runtime does), or when the options ask, read initializers listed as graph inputs as
    constants, and say so in the report."""
    if model.ir_version >= 4 and not options.inputs_as_constants:
        return None
    detached = initializer_inputs.detach(model.graph)
    if detached.count:
        why = (f"below IR version 4 (this model: IR {model.ir_version}), as ONNX Runtime reads them"
               if model.ir_version < 4 else "as asked (inputs_as_constants); the folded model no longer lists them "
               "as inputs")
        report.notes.append(f"{detached.count} initializers also listed as graph inputs were read as constants, "
                            f"{why}")
    return detached


def inspect_model(source: ModelLike, *, options: FoldOptions | None = None) -> FoldReport:
    """What `fold_model` would do to `source`, without writing anything: the report of a fold run on a copy.

    `folded` in the report means "can be folded"; `skipped` and `kept` carry the reason. A file is read
    without the values of its weights (the producers' weight tensors: only their shapes and types; BN
    parameters, biases and per-channel constants are read), so its cost does not grow with them; a fold that
    `fold` refuses because of those values (a folded weight beyond its type's range, an int8 weight that
    cannot be negated) shows as `folded` here.
    """
    if isinstance(source, onnx.ModelProto):
        return fold_model(source, options=options).report
    with TensorStore(values=False) as store:
        model = load_model(source, keep_weights_on_disk=True)
        size = stored_bytes(source, data_files(model))
        report = fold_model(model, options=options, in_place=True, store=store).report
    if report.before is not None:
        report.before.file_bytes = size
    return report


def _fold_graph(
    graph: onnx.GraphProto,
    outer_index: GraphIndex | None,
    outer_constants: ConstantResolver | None,
    path: str,
    options: FoldOptions,
    report: FoldReport,
    opset: int,
    model: onnx.ModelProto | None = None,
    store: TensorStore | None = None,
) -> None:
    index = GraphIndex(graph, outer_index, path, store)
    constants = ConstantResolver(index, outer_constants)
    before = [(condition, condition.snapshot(index, constants)) for condition in POST_CONDITIONS]
    ctx = FoldContext(index, constants, options, model=model, opset=opset)
    ctx.fold_into = partial(_fold_into, ctx)
    ctx.takes_fold = partial(_takes_fold, ctx)
    ctx.protected = protected_parts(index, constants)
    early = _rewrite_blocks(ctx)
    for node in list(index.nodes):
        for done in early.pop(id(node), ()):
            report.add(done)
        if index.is_removed(node):
            continue
        if is_onnx_op(node, "BatchNormalization"):
            report.add(_visit_batchnorm(ctx, node))
        elif (info := classify(index, node, constants)) is not None:
            report.add(_record(node, info.kind, "kept", info.reason, path=path))
        elif id(node) not in ctx.protected and (record := _visit_subject(ctx, node)) is not None:
            report.add(record)
    index.commit()
    folded = ConstantResolver(index, outer_constants)
    for condition, snapshot in before:
        condition.check(snapshot, condition.snapshot(index, folded))
    for node in index.nodes:
        for sub_path, sub in named_subgraphs(node, path):
            _fold_graph(sub, index, constants, sub_path, options, report, opset)


def _fold_function(function: onnx.FunctionProto, options: FoldOptions, report: FoldReport, opset: int) -> None:
    """Fold inside a model-local function: its body is folded as a graph; new tensors become Constant nodes."""
    path, graph = function_graph(function)
    folded_before = report.folded
    _fold_graph(graph, None, None, path, options, report, opset)
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


def _record(node: onnx.NodeProto, kind: str, outcome: Outcome, reason: str, *, path: str,
            target: onnx.NodeProto | None = None, quantization: str = "") -> FoldRecord:
    return FoldRecord(
        op_type=node.op_type,
        node=node_label(node),
        kind=kind,
        outcome=outcome,
        reason=reason,
        target=node_label(target) if target is not None else None,
        module=module_path(node),
        graph=path,
        quantization=quantization or None,
    )


def _rewrite_blocks(ctx: FoldContext) -> dict[int, list[FoldRecord]]:
    """Offer every node, in graph order, to the "block" rules; the first plan is applied.

    Returns the records made, keyed by the `id()` of the node each is about (the block's last node, and each
    normalization node it absorbed), so that the main visit reports them in graph order.
    """
    index = ctx.index
    records: dict[int, list[FoldRecord]] = defaultdict(list)
    for node in list(index.nodes):
        rules = [] if index.is_removed(node) or id(node) in ctx.protected else _rules_for(ctx, node, _BLOCK)
        if not rules:
            continue
        reasons: list[str] = []
        found = _first_of(ctx, rules, partial(_check_block, ctx, node), reasons)
        if found is None:
            records[id(node)].append(_record(node, rules[0].kind, "skipped", "; ".join(reasons), path=index.path))
            continue
        rule, plan = found
        kinds = [_kind(ctx, n) for n in plan.absorbed]
        record = _apply(ctx, node, rule.kind, plan)
        records[id(node)].append(record)
        for absorbed, kind in zip(plan.absorbed, kinds):
            records[id(absorbed)].append(_record(absorbed, kind, "folded", record.reason, path=index.path,
                                                 target=plan.target))
    return records


def _check_block(ctx: FoldContext, node: onnx.NodeProto, rule: BlockRule) -> Plan:
    return rule.check(ctx, node)


def _kind(ctx: FoldContext, node: onnx.NodeProto) -> str:
    """The record kind of a normalization node ("batchnorm" ...)."""
    info = classify(ctx.index, node, ctx.constants)
    return info.kind if info is not None else node.op_type.lower()


def _visit_batchnorm(ctx: FoldContext, bn: onnx.NodeProto) -> FoldRecord:
    index = ctx.index
    path = index.path
    info = classify(index, bn, ctx.constants)
    if info is not None and info.protected:
        return _record(bn, info.kind, "kept", info.reason, path=path)
    try:
        params = _batchnorm_params(ctx, bn)
    except Refusal as refusal:
        return _record(bn, "batchnorm", "skipped", refusal.reason, path=path)
    reasons: list[str] = []  # sentences from fold rules that applied but refused
    context: list[str] = []  # why no rule applied at all
    plan = _fold_after(ctx, bn, index.producer.get(bn.input[0]), params, reasons, context, "batchnorm")
    consumer = value_reader(index, bn.output[0])
    if plan is None and consumer is not None:
        plan = _first_plan(ctx, bn, consumer, params, _neighbours(ctx, consumer, _BEFORE, "batchnorm"), reasons)
    if plan is not None:
        return _apply(ctx, bn, "batchnorm", plan)
    why = "; ".join(reasons) if reasons else \
        "standalone: " + "; ".join(context) + ", and nothing after it takes a fold"
    outcome: Outcome = "skipped" if reasons else "kept"
    for rule in _rules_for(ctx, bn, _ALONE):
        off = ctx.options.turned_off(rule.name)
        if off is not None:
            why, outcome = f"{why}; {off}", "skipped"
            continue
        try:
            plan = rule.check(ctx, bn, params)
        except Refusal as refusal:
            why = f"{why}; {refusal.reason}"
            continue
        plan.note = f"{plan.note} (not folded: {why})"
        return _apply(ctx, bn, "batchnorm", plan)
    return _record(bn, "batchnorm", outcome, why, path=path)


def _batchnorm_params(ctx: FoldContext, bn: onnx.NodeProto) -> ChannelParams:
    opaque = _opaque_reason(bn)
    if opaque:
        raise Refusal(opaque)
    return batchnorm_params(ctx, bn)


def _visit_subject(ctx: FoldContext, node: onnx.NodeProto) -> FoldRecord | None:
    """Fold a node a subject rule recognises into the linear op before or after it (None: no rule's candidate)."""
    for rule in _rules_for(ctx, node, _SUBJECT):
        data = rule.operand(ctx, node)
        if data is None:
            continue
        producer = ctx.index.producer.get(data)
        # Not a tail: nothing fixed to fold into (attention's MatMul(Q, K) / sqrt(d)), or the producer's output
        # is read elsewhere too (GELU's x * ... / sqrt(2)).
        if producer is not None and _fixed_weights(ctx, producer, _AFTER, rule.kind) \
                and ctx.index.only_consumer(producer.output[0]) is node:
            return _fold_subject(ctx, rule, node, producer, "after")
        consumer = value_reader(ctx.index, node.output[0])
        if consumer is not None and _fixed_weights(ctx, consumer, _BEFORE, rule.kind):
            return _fold_subject(ctx, rule, node, consumer, "before")
    return None


def _fixed_weights(ctx: FoldContext, neighbour: onnx.NodeProto, rules: Sequence[NeighbourRule], kind: str) -> bool:
    """Whether a rule of `rules` for subjects of `kind` could fold into `neighbour`'s constant weights."""
    return any(r.has_fixed_weights(ctx, neighbour) for r in _neighbours(ctx, neighbour, rules, kind))


def _fold_subject(ctx: FoldContext, rule: SubjectRule, node: onnx.NodeProto, neighbour: onnx.NodeProto,
                  position: str) -> FoldRecord:
    """Fold `node` into `neighbour`: the producer of its input ("after") or the consumer of its output."""
    path = ctx.index.path
    off = ctx.options.turned_off(rule.name)
    if off is not None:
        return _record(node, rule.kind, "skipped", off, path=path)
    try:
        params = rule.params(ctx, node)
    except Refusal as refusal:
        return _record(node, rule.kind, "skipped", refusal.reason, path=path)
    reasons: list[str] = []
    if position == "after":
        plan = _fold_after(ctx, node, neighbour, params, reasons, [], rule.kind)
    else:
        plan = _first_plan(ctx, node, neighbour, params, _neighbours(ctx, neighbour, _BEFORE, rule.kind), reasons)
    if plan is not None:
        return _apply(ctx, node, rule.kind, plan)
    return _record(node, rule.kind, "skipped", "; ".join(reasons), path=path)


def _rules_for(ctx: FoldContext, node: onnx.NodeProto, rules: Sequence[R]) -> list[R]:
    """The rules of `rules` the options want whose op types and structure match `node` (turned off or not)."""
    return [r for r in rules if is_onnx_op(node, *r.op_types) and r.wanted(ctx.options) and r.accepts(ctx, node)]


def _neighbours(ctx: FoldContext, node: onnx.NodeProto, rules: Sequence[NeighbourRule],
                kind: str) -> list[NeighbourRule]:
    """The neighbour rules of `rules` for `node` (as `_rules_for`) that fold subjects of `kind`; none for a node
    that belongs to a protected normalization."""
    if id(node) in ctx.protected:
        return []
    return [r for r in _rules_for(ctx, node, rules) if kind in r.kinds]


def _fold_after(ctx: FoldContext, node: onnx.NodeProto, producer: onnx.NodeProto | None, params: ChannelParams,
                reasons: list[str], context: list[str], kind: str) -> Plan | None:
    """Try the rules that fold `node` (a subject of `kind`) into the `producer` of its input."""
    index = ctx.index
    if producer is None:
        context.append("its input is a graph input" if index.is_graph_input(node.input[0])
                       else "its input is computed in an enclosing graph")
        return None
    after = _neighbours(ctx, producer, _AFTER, kind)
    if not after:
        op = producer.op_type if is_onnx_op(producer, producer.op_type) else f"{producer.domain}.{producer.op_type}"
        norm = ctx.protected.get(id(producer))
        context.append(f"its input comes from {op} {node_label(producer)}, " +
                       (f"part of {norm}, which is kept intact" if norm else "which is not linear"))
        return None
    if index.uses(producer.output[0]) - len(shape_readers(index, producer.output[0])) > 1 \
            or producer.output[0] in index.graph_outputs:
        reasons.append(_fanout_reason(index, producer))
        return None
    return _first_plan(ctx, node, producer, params, after, reasons)


def _takes_fold(ctx: FoldContext, producer: onnx.NodeProto) -> bool:
    """Whether an "after" rule (for any kind of subject) finds constant weights in `producer`
    (`FoldContext.takes_fold`)."""
    return any(r.has_fixed_weights(ctx, producer) for r in _rules_for(ctx, producer, _AFTER))


def _subject_kind(ctx: FoldContext, node: onnx.NodeProto) -> str:
    """The record kind of a subject: "batchnorm", or the kind of the subject rule that recognises `node`."""
    if is_onnx_op(node, "BatchNormalization"):
        return "batchnorm"
    return next((r.kind for r in _rules_for(ctx, node, _SUBJECT) if r.operand(ctx, node) is not None), "")


def _fold_into(ctx: FoldContext, node: onnx.NodeProto, producer: onnx.NodeProto, params: ChannelParams) -> Plan:
    """The plan of the "after" rules folding `node` into `producer` (`FoldContext.fold_into`), or `Refusal`."""
    reasons: list[str] = []
    context: list[str] = []
    plan = _fold_after(ctx, node, producer, params, reasons, context, _subject_kind(ctx, node))
    if plan is None:
        raise Refusal("; ".join(reasons or context))
    return plan


def _first_plan(ctx: FoldContext, node: onnx.NodeProto, neighbour: onnx.NodeProto, params: ChannelParams,
                candidates: Sequence[NeighbourRule], reasons: list[str]) -> Plan | None:
    opaque = _opaque_reason(neighbour)
    if opaque and candidates:
        reasons.append(f"{neighbour.op_type} {node_label(neighbour)}: {opaque}")
        return None
    found = _first_of(ctx, candidates, lambda rule: rule.check(ctx, node, neighbour, params), reasons)
    return found[1] if found is not None else None


def _first_of(ctx: FoldContext, rules: Sequence[R], attempt: Callable[[R], Plan],
              reasons: list[str]) -> tuple[R, Plan] | None:
    """The first rule of `rules` whose `attempt` gives a plan, with the plan; each rule that is turned off or
    refuses adds its sentence to `reasons`."""
    for rule in rules:
        off = ctx.options.turned_off(rule.name)
        if off is not None:
            reasons.append(off)
            continue
        try:
            return rule, attempt(rule)
        except Refusal as refusal:
            reasons.append(refusal.reason)
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
    return _record(node, kind, "folded", reason, path=ctx.index.path, target=plan.target,
                   quantization=plan.quantization)


def _fanout_reason(index: GraphIndex, producer: onnx.NodeProto) -> str:
    out = producer.output[0]
    if out in index.graph_outputs:
        return f"the output of {producer.op_type} {node_label(producer)} is also a graph output"
    return (f"the output of {producer.op_type} {node_label(producer)} is also read by "
            f"{index.uses(out) - len(shape_readers(index, out)) - 1} other node(s)")
