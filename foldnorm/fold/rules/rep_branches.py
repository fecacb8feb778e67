"""Train-time multi-branch blocks (RepVGG, MobileOne, FastViT, RepGhost, RepViT) merged into one Conv.

    Y = A(Σ_b A_b(Conv(X; W_b, b_b)) + Σ_i A_i(X) + c)   →   Y = Conv(X; W, b)

The block is an expression of nested Adds and Subs whose every branch is linear in one input X with constant
parameters: a Conv of X, or X itself (the identity), under per-channel affine maps anywhere in the expression
(BatchNormalization; Mul/Add/Sub/Div by a per-channel constant, which covers a scale branch, timm's `Add(.., 0)`
constant terms and FastViT's layer scale), and the per-channel maps right after the outermost sum. Every kernel
is placed inside the largest one where the attributes prove the outputs line up (`foldnorm.fold.branch_math`),
the identity becomes an identity kernel per group, and the constant terms go into the bias; float64 maths,
rounded once to the weight dtype (the overflow and underflow guards apply).

The rule looks at the outermost sum of a block: a sum whose output goes, through per-channel maps, into another
sum of the same block is left to that one. Refused, with the reason: outputs that would not line up (strides,
dilations, pads, `auto_pad=SAME_*` with a stride), a value inside the block read by another node or that is a
graph output, weights or parameters that are not constants, group counts whose gcd is coarser than every
branch's (the merged Conv would be denser than each), Convs that change the channel count beside an identity
branch or each in their own way, and folded values the dtype cannot hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import onnx

from foldnorm.fold.bn_math import ChannelAffine, emit
from foldnorm.fold.branch_math import Misaligned, Window, align, merge_kernels, merged_group
from foldnorm.fold.context import FoldContext
from foldnorm.fold.normalizations import classify
from foldnorm.fold.quantized import dequantized_input
from foldnorm.fold.rules.affine_tail import AffineTail
from foldnorm.fold.rules.base import BlockRule, Plan, Refusal, group_of
from foldnorm.fold.rules.common import batchnorm_params, constant_weights
from foldnorm.onnxgraph.graph import attr, attribute_refs, is_onnx_op, node_label, set_attr

_TAIL = AffineTail()  # its per-channel reading of a Mul/Add/Sub/Div by a constant
_MAX_PATHS = 64  # branches of one block (MobileOne has 6); more, or deeper, is not a block
_MAX_DEPTH = 64
_SUM, _MAP, _CONV = "sum", "map", "conv"


def _role(ctx: FoldContext, node: onnx.NodeProto | None) -> str | None:
    """What `node` is in a block: a sum of two branches, a per-channel map, a Conv, or nothing (None)."""
    if node is None or attribute_refs(node):
        return None
    if is_onnx_op(node, "Add", "Sub") and len(node.input) == 2 and all(ctx.constant(i) is None for i in node.input):
        return _SUM
    if is_onnx_op(node, "BatchNormalization"):
        info = classify(ctx.index, node, ctx.constants)
        return _MAP if info is not None and not info.protected else None
    if is_onnx_op(node, *_TAIL.op_types) and _TAIL.operand(ctx, node) is not None:
        return _MAP
    if is_onnx_op(node, "Conv") and len(node.input) > 1:
        return _CONV
    return None


def _data_input(ctx: FoldContext, node: onnx.NodeProto) -> str | None:
    """The input a per-channel map acts on."""
    return node.input[0] if node.op_type == "BatchNormalization" else _TAIL.operand(ctx, node)


@dataclass
class _Block:
    """The branches under one sum: each path runs from the sum's output down to the common input X (last)."""

    x: str
    paths: list[list[str]]
    nodes: list[onnx.NodeProto]  # the producers of the values above X, each once

    def convs(self, ctx: FoldContext) -> list[onnx.NodeProto]:
        """The Conv branches (a Conv reached by several paths once)."""
        lowest = [ctx.index.producer[path[-2]] for path in self.paths]  # the op that reads X on each branch
        return _unique(node for node in lowest if _role(ctx, node) == _CONV)

    def has_identity(self, ctx: FoldContext) -> bool:
        """Whether some branch is X itself under per-channel maps."""
        return any(_role(ctx, ctx.index.producer[path[-2]]) != _CONV for path in self.paths)


def _unique(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    return list({id(n): n for n in nodes}.values())


def _descend(ctx: FoldContext, path: list[str], crossed: bool, paths: list[list[str]]) -> bool:
    """Collect the paths below `path[-1]` through sums and maps, each ending at a Conv's input or where the block
    cannot go on. A value read elsewhere can only be X, or a reason to refuse the block: a path goes through the
    first such value (to name it in the refusal) and stops at the second. False when the block is too big."""
    if len(paths) >= _MAX_PATHS or len(path) > _MAX_DEPTH:
        return False
    value = path[-1]
    if len(path) > 1 and ctx.index.only_consumer(value) is None:
        if crossed:
            paths.append(path)
            return True
        crossed = True
    node = ctx.index.producer.get(value)
    role = _role(ctx, node)
    if role == _SUM:
        assert node is not None
        return all(_descend(ctx, [*path, name], crossed, paths) for name in node.input)
    if role == _MAP:
        assert node is not None
        return _descend(ctx, [*path, _data_input(ctx, node) or ""], crossed, paths)
    paths.append([*path, node.input[0]] if role == _CONV and node is not None else path)
    return True


def _block(ctx: FoldContext, top: onnx.NodeProto) -> _Block | None:
    """The block under the sum `top`: two branches or more, linear in one X, one of them a Conv of X."""
    if _role(ctx, top) != _SUM:
        return None
    paths: list[list[str]] = []
    if not _descend(ctx, [top.output[0]], False, paths):
        return None
    finals = list(dict.fromkeys(path[-1] for path in paths))
    common = [value for value in finals if value and all(value in path for path in paths)]
    if not common:
        return None
    x = max(common, key=paths[0].index)  # the deepest input every branch reaches
    # paths that part below X are one branch (the evaluation walks each branch once, from the top)
    paths = [list(p) for p in dict.fromkeys(tuple(path[: path.index(x) + 1]) for path in paths)]
    producer = ctx.index.producer
    if not any(_role(ctx, producer[path[-2]]) == _CONV for path in paths):
        return None
    return _Block(x, paths, _unique(producer[v] for path in paths for v in path[:-1]))


def _map(ctx: FoldContext, node: onnx.NodeProto, rank: int, channels: int) -> ChannelAffine:
    """The per-channel affine map of a BatchNormalization or Mul/Add/Sub/Div by a constant, on axis 1."""
    try:
        params = batchnorm_params(ctx, node) if node.op_type == "BatchNormalization" else _TAIL.params(ctx, node)
        return params.on_axis(rank, 1, channels)
    except Refusal as refusal:
        raise Refusal(f"{node.op_type} {node_label(node)}: {refusal.reason}") from None


def _tail(ctx: FoldContext, top: onnx.NodeProto, rank: int,
          channels: int) -> list[tuple[onnx.NodeProto, ChannelAffine]]:
    """The per-channel maps right after the sum (each the only reader of the one before) that fold."""
    tail = []
    value = top.output[0]
    while (user := ctx.index.only_consumer(value)) is not None and _role(ctx, user) == _MAP \
            and _data_input(ctx, user) == value:
        try:
            tail.append((user, _map(ctx, user, rank, channels)))
        except Refusal:
            break
        value = user.output[0]
    return tail


def _read_outside(ctx: FoldContext, block: _Block) -> str | None:
    """Why a value strictly inside the block cannot go (another node reads it, or it is a graph output), or None."""
    index = ctx.index
    inside = Counter(name for node in block.nodes for name in node.input)
    for value in dict.fromkeys(v for path in block.paths for v in path[1:-1]):
        producer = index.producer[value]
        what = f"the output of {producer.op_type} {node_label(producer)} (inside the branch sum)"
        if value in index.graph_outputs:
            return f"{what} is also a graph output"
        others = len(index.consumers.get(value, ())) - inside[value]
        if others:
            return f"{what} is also read by {others} other node(s)"
    return None


def _window(conv: onnx.NodeProto, kernel: tuple[int, ...]) -> Window:
    """Where `conv` reads its input, from its attributes; `auto_pad=SAME_*` only with stride 1."""
    rank = len(kernel)
    strides = tuple(int(s) for s in attr(conv, "strides", None) or [1] * rank)
    dilations = tuple(int(d) for d in attr(conv, "dilations", None) or [1] * rank)
    auto_pad = attr(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides):
            raise Refusal(f"Conv {node_label(conv)} has auto_pad={auto_pad} with strides {list(strides)}: its pads "
                          "depend on the input size, so its alignment with the other branches cannot be proved")
        totals = [d * (k - 1) for d, k in zip(dilations, kernel)]
        small, large = tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        begin = end = (0,) * rank
    else:
        pads = [int(p) for p in attr(conv, "pads", None) or [0] * (2 * rank)]
        begin, end = tuple(pads[:rank]), tuple(pads[rank:])
    return Window(kernel, strides, dilations, begin, end)


@dataclass
class _Sum:
    """The block's expression as per-channel float64 coefficients: Σ_b S_b ⊙ Conv_b(X) + I ⊙ X + bias."""

    conv_scale: dict[int, np.ndarray]  # the output-channel scale S_b of each Conv branch, by id()
    identity: np.ndarray
    bias: np.ndarray


def _evaluate(ctx: FoldContext, block: _Block, output: str, channels: int,
              maps: dict[int, ChannelAffine], conv_bias: dict[int, np.ndarray | None]) -> _Sum:
    """Expand the block (with its tail, which ends at `output`) into its coefficients; `maps` holds every
    per-channel map of both. A map's shift enters the bias once, scaled by whatever is applied after it."""
    result = _Sum({}, np.zeros(channels), np.zeros(channels))

    def down(value: str, s: np.ndarray) -> None:
        if value == block.x:
            result.identity += s
            return
        node = ctx.index.producer[value]
        role = _role(ctx, node)
        if role == _SUM:
            down(node.input[0], s)
            down(node.input[1], -s if node.op_type == "Sub" else s)
        elif role == _MAP:
            affine = maps[id(node)]
            result.bias += s * affine.shift
            down(_data_input(ctx, node) or "", s * affine.scale)
        else:
            result.conv_scale[id(node)] = result.conv_scale.get(id(node), 0.0) + s
            b = conv_bias[id(node)]
            if b is not None:
                result.bias += s * np.asarray(b, dtype=np.float64).reshape(-1)

    down(output, np.ones(channels))
    return result


def _op_word(ctx: FoldContext, node: onnx.NodeProto) -> str:
    """How a branch's op reads in the report: "3x3 Conv", "BN", "Mul", "const" (an Add/Sub of a constant)."""
    if node.op_type == "Conv":
        weight = ctx.constant(node.input[1])
        return ("x".join(str(k) for k in weight.shape[2:]) + " " if weight is not None else "") + "Conv"
    if node.op_type == "BatchNormalization":
        return "BN"
    return "const" if node.op_type in ("Add", "Sub") and _role(ctx, node) == _MAP else node.op_type


def _describe(ctx: FoldContext, block: _Block, tail: list[onnx.NodeProto], target: onnx.NodeProto) -> str:
    """The report's sentence: "3 branches merged into Conv c: 3x3 Conv+BN, 1x1 Conv+BN, identity BN"."""
    producer = ctx.index.producer
    shared = Counter(v for path in block.paths for v in set(path[:-1]))
    labels: Counter[str] = Counter()
    for path in block.paths:
        own = [producer[v] for v in reversed(path[:-1]) if shared[v] == 1]  # the branch's own ops, from X up
        words = [_op_word(ctx, node) for node in own]
        if own and own[0].op_type == "Conv":
            labels["+".join(words)] += 1
        else:
            labels[" ".join(["identity", "+".join(words)]).strip()] += 1
    parts = [f"{label} x{n}" if n > 1 else label for label, n in labels.items()]
    sentence = f"{len(block.paths)} branches merged into Conv {node_label(target)}: {', '.join(parts)}"
    combined = [_op_word(ctx, producer[v]) for v in dict.fromkeys(v for path in block.paths for v in path[1:-1])
                if shared[v] > 1 and producer[v].op_type != "Add"]
    if combined:
        sentence += f"; combined through {', '.join(combined)}"
    if tail:
        sentence += f"; then {', '.join(_op_word(ctx, node) for node in tail)} after the sum"
    return sentence


class RepBranches(BlockRule):
    """Merge a sum of parallel linear branches of one input into one Conv."""

    name = "rep-branches"
    summary = "Add of Conv(+BN), BN, identity, scale and constant branches of one input: merged into one Conv"
    op_types = ("Add", "Sub")
    kind = "branches"

    def accepts(self, ctx: FoldContext, node: onnx.NodeProto) -> bool:
        """Whether `node` is the outermost sum of a block: a sum above it (through per-channel maps) whose block
        takes this one in, and whose inner values nothing else reads, is looked at instead."""
        if _block(ctx, node) is None:
            return False
        value = node.output[0]
        while (user := ctx.index.only_consumer(value)) is not None:
            role = _role(ctx, user)
            if role == _SUM:
                outer = _block(ctx, user)
                return outer is None or _read_outside(ctx, outer) is not None
            if role != _MAP or _data_input(ctx, user) != value:
                break
            value = user.output[0]
        return True

    def check(self, ctx: FoldContext, top: onnx.NodeProto) -> Plan:
        """The merged Conv's weights, bias and attributes, or `Refusal` saying why the branches stay."""
        block = _block(ctx, top)
        assert block is not None, "check() is asked only for a node accepts() took"
        outside = _read_outside(ctx, block)
        if outside is not None:
            raise Refusal(outside)
        convs = block.convs(ctx)
        quantized = [conv for conv in convs if dequantized_input(ctx, conv, 1) is not None]
        if quantized:
            raise Refusal(f"Conv {node_label(quantized[0])} has quantized (QDQ) weights, which one merged Conv "
                          "could only hold requantized")
        weights = {id(conv): constant_weights(ctx, conv) for conv in convs}
        first = weights[id(convs[0])][0]  # every Conv reads X, so every weight has X's dtype
        rank, identity = first.ndim, block.has_identity(ctx)
        out, cin = _channels(convs, {k: w for k, (w, _) in weights.items()}, identity)
        maps = {id(node): _map(ctx, node, rank, out) for node in block.nodes if _role(ctx, node) == _MAP}
        tail = _tail(ctx, top, rank, out)
        maps.update((id(node), affine) for node, affine in tail)
        output = tail[-1][0].output[0] if tail else top.output[0]
        total = _evaluate(ctx, block, output, out, maps, {k: b for k, (_, b) in weights.items()})
        windows = [_window(conv, weights[id(conv)][0].shape[2:]) for conv in convs]
        names = [f"Conv {node_label(conv)}" for conv in convs]
        if identity:
            windows.append(Window.identity(rank - 2))
            names.append("the identity branch")
        try:
            alignment = align(windows, names)
        except Misaligned as exc:
            raise Refusal(str(exc)) from None
        groups = [group_of(conv) for conv in convs]
        group = merged_group(groups)
        if group is None:
            raise Refusal(f"the Conv branches have group counts {groups}: one Conv would need a coarser group "
                          "count than every branch (denser than each of them)")
        kernels = [(np.multiply(weights[id(c)][0], total.conv_scale[id(c)].reshape(-1, *[1] * (rank - 1)),
                                dtype=np.float64), g) for c, g in zip(convs, groups)]
        merged = merge_kernels((out, cin), group, alignment, kernels, total.identity if identity else None)
        target = next((c for c in convs if tuple(weights[id(c)][0].shape[2:]) == alignment.window.kernel),
                      convs[0])
        new_w, problem = emit(merged, first.dtype, channel_axis=0)
        new_b, bias_problem = emit(total.bias, first.dtype)
        if new_w is None or new_b is None:
            raise Refusal(f"not merged into Conv {node_label(target)}: "
                          f"{problem if new_w is None else f'bias {bias_problem}'}")
        nodes = [*block.nodes, *(node for node, _ in tail)]
        attrs = {"kernel_shape": alignment.window.kernel, "strides": alignment.window.strides,
                 "dilations": alignment.window.dilations, "pads": alignment.window.begin + alignment.window.end,
                 "group": group}
        return Plan(target, partial(_rewrite, ctx, target, [n for n in nodes if n is not target], output,
                                    (new_w, new_b), attrs),
                    note=_describe(ctx, block, [node for node, _ in tail], target),
                    absorbed=tuple(node for node in nodes if node.op_type == "BatchNormalization"))


def _channels(convs: list[onnx.NodeProto], weights: dict[int, np.ndarray], identity: bool) -> tuple[int, int]:
    """(output, input) channels of every Conv branch; `Refusal` when they differ, or differ from each other
    beside an identity branch (the branch outputs would only broadcast together)."""
    shapes = {(weights[id(c)].shape[0], weights[id(c)].shape[1] * group_of(c)) for c in convs}
    out, cin = next(iter(shapes))
    if len(shapes) > 1 or (identity and out != cin):
        pairs = ", ".join(f"{i} -> {o}" for o, i in sorted(shapes))
        raise Refusal(f"the Conv branches map input to output channels as {pairs}"
                      f"{' beside an identity branch' if identity else ''}: the branch outputs would only "
                      "broadcast together, which no one Conv computes")
    return out, cin


def _rewrite(ctx: FoldContext, target: onnx.NodeProto, gone: list[onnx.NodeProto], output: str,
             params: tuple[np.ndarray, np.ndarray], attrs: dict[str, Any]) -> None:
    """Remove the block's other nodes; `target` takes the merged weight, bias and attributes and writes `output`."""
    index = ctx.index
    dead = [name for node in gone for name in node.input]
    for node in gone:
        index.remove_node(node)
    ctx.set_param(target, 2, np.ascontiguousarray(params[1]), "bias")
    ctx.set_param(target, 1, np.ascontiguousarray(params[0]), "weight")
    for key, value in attrs.items():
        set_attr(target, key, list(value) if isinstance(value, tuple) else value)
    for k in reversed(range(len(target.attribute))):
        if target.attribute[k].name == "auto_pad":
            del target.attribute[k]
    old = target.output[0]
    index.set_output(target, 0, output)
    index.remove_if_dead([old, *dead])
