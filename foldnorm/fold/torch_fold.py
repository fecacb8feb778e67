"""Fold BatchNorm modules into the Conv/ConvTranspose/Linear module that feeds them, on the PyTorch side.

The graph comes from `torch.fx` tracing, so "feeds" means "its output goes into this BN and nowhere
else". A fold is refused (and reported) when the producer or the BN module is called more than once,
when the producer's output has other consumers, when a weight is shared, when the BN computes batch
statistics, or when the BN's channel axis cannot be shown to be the producer's output-channel axis.
The maths is `foldnorm.fold.bn_math` (float64, rounded once to the weight's dtype).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from foldnorm.errors import FoldnormError
from foldnorm.fold import bn_math
from foldnorm.fold.report import FoldRecord, FoldReport

if TYPE_CHECKING:
    import torch
    from torch import fx, nn


@dataclass
class ModuleFoldResult:
    """The folded copy (eval mode, a `torch.fx.GraphModule`) and one record per BatchNorm module call."""

    module: nn.Module
    report: FoldReport


def fold_module(module: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None) -> ModuleFoldResult:
    """Return an eval-mode copy of `module` with every foldable BatchNorm fused into its producer.

    `module` itself is never changed. `example_inputs` (optional) lets foldnorm prove, from real shapes,
    that a BatchNorm1d after a Linear or Conv1d normalizes the producer's output channels; without it
    those pairs are skipped with a reason (Conv2d/3d pairs need no shapes: BatchNorm2d/3d accept only
    batched inputs, so the channel axis is axis 1).
    """
    from torch import fx

    work = copy.deepcopy(module).eval()
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:  # fx raises assorted errors for data-dependent control flow
        raise FoldnormError(
            f"{type(module).__name__} cannot be traced by torch.fx ({str(exc).splitlines()[0] if str(exc) else exc!r});"
            " fold its exported ONNX with `foldnorm fold` instead"
        ) from None
    ranks = _output_ranks(gm, example_inputs) if example_inputs is not None else None
    calls = _calls_per_module(gm)
    shared = _shared_parameters(gm)
    report = FoldReport()
    for node in list(gm.graph.nodes):
        bn = _module_of(gm, node)
        if not _is_batchnorm(bn):
            continue
        producer_node = node.args[0] if node.args else None
        reason, producer = _refusal(gm, node, producer_node, calls, shared, ranks)
        record = FoldRecord(type(bn).__name__, node.name, "batchnorm", "skipped", reason or "", module=str(node.target))
        if reason is None:
            assert producer is not None and bn is not None and isinstance(producer_node, fx.Node)
            reason = _fuse(producer, bn)
            if reason is None:
                node.replace_all_uses_with(producer_node)
                gm.graph.erase_node(node)
                record.outcome, record.target = "folded", str(producer_node.target)
                record.reason = f"folded into {type(producer).__name__} {producer_node.target}"
            else:
                record.reason = reason
        report.add(record)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return ModuleFoldResult(gm.eval(), report)


def _module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def _is_batchnorm(module: nn.Module | None) -> bool:
    from torch import nn

    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _calls_per_module(gm: fx.GraphModule) -> Counter[int]:
    """How many graph nodes call each module object (aliases under two names count together)."""
    return Counter(id(gm.get_submodule(str(n.target))) for n in gm.graph.nodes if n.op == "call_module")


def _shared_parameters(gm: fx.GraphModule) -> set[int]:
    """Parameters registered under more than one name (tied weights)."""
    seen = Counter(id(p) for _, p in gm.named_parameters(remove_duplicate=False))
    return {pid for pid, n in seen.items() if n > 1}


def _output_ranks(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """The rank of every node's tensor output, from one run on the example inputs."""
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(*example_inputs)
    ranks = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            ranks[node.name] = len(meta.shape)
    return ranks


def _refusal(gm: fx.GraphModule, bn_node: fx.Node, producer_node: Any, calls: Counter[int], shared: set[int],
             ranks: dict[str, int] | None) -> tuple[str | None, nn.Module | None]:
    """Why the BN at `bn_node` cannot fold into its producer (None when it can), and the producer module."""
    from torch import fx, nn

    bn = gm.get_submodule(str(bn_node.target))
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    if bn.running_mean is None or bn.running_var is None:
        return "the BatchNorm has no running statistics (track_running_stats=False): it normalizes each batch", None
    if calls[id(bn)] > 1:
        return f"the BatchNorm module {bn_node.target} is called {calls[id(bn)]} times", None
    producer = _module_of(gm, producer_node) if isinstance(producer_node, fx.Node) else None
    if not isinstance(producer, (nn.modules.conv._ConvNd, nn.Linear)):
        return "its input is not produced by a Conv, ConvTranspose or Linear module", None
    assert isinstance(producer_node, fx.Node)
    name = f"{type(producer).__name__} {producer_node.target}"
    if calls[id(producer)] > 1:
        return f"{name} is called {calls[id(producer)]} times (folding would change every call)", None
    if len(producer_node.users) > 1:
        return f"the output of {name} has {len(producer_node.users)} consumers", None
    if any(id(p) in shared for p in producer.parameters(recurse=False)):
        return f"a parameter of {name} is shared with another module", None
    channels = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if channels != bn.num_features:
        return f"{name} has {channels} output channels but the BatchNorm normalizes {bn.num_features}", None
    needs_rank = 2 if isinstance(producer, nn.Linear) else _spatial_dims(producer) + 2
    if isinstance(producer, nn.Linear) or _spatial_dims(producer) == 1:
        rank = None if ranks is None else ranks.get(producer_node.name)
        if rank is None:
            return (f"cannot prove the BatchNorm's channel axis is the output-channel axis of {name} without "
                    "shapes; pass example_inputs"), None
        if rank != needs_rank:
            return f"the output of {name} has rank {rank}, so the BatchNorm's axis 1 is not its channel axis", None
    return None, producer


def _spatial_dims(conv: Any) -> int:
    return len(conv.kernel_size) if hasattr(conv, "kernel_size") else 0


def _fuse(producer: Any, bn: Any) -> str | None:
    """Rewrite `producer`'s weight and bias in place (on the copy); a reason string if the dtype refuses."""
    import torch
    from torch import nn

    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float64).cpu().numpy()

    num = bn.num_features
    gamma = f64(bn.weight) if bn.weight is not None else np.ones(num)  # affine=False: gamma 1, beta 0
    beta = f64(bn.bias) if bn.bias is not None else np.zeros(num)
    affine = bn_math.batchnorm_affine(gamma, beta, f64(bn.running_mean), f64(bn.running_var), float(bn.eps))
    weight = f64(producer.weight)
    bias = None if producer.bias is None else f64(producer.bias)
    if isinstance(producer, nn.modules.conv._ConvTransposeNd):
        w, b = bn_math.fold_conv_transpose(weight, bias, affine, producer.groups)
        out_axis = 1
    else:
        w, b = bn_math.fold_conv(weight, bias, affine)
        out_axis = 0
    dtype = producer.weight.dtype
    np_dtype = ml_dtypes.bfloat16 if dtype == torch.bfloat16 else torch.empty((), dtype=dtype).numpy().dtype
    w_out, why = bn_math.emit(w, np_dtype, channel_axis=out_axis)
    b_out, why_b = bn_math.emit(b, np_dtype)
    if w_out is None or b_out is None:
        return why or why_b
    device = producer.weight.device
    with torch.no_grad():
        # the rounded values are exact in `dtype`, so going through float64 changes nothing
        producer.weight = nn.Parameter(torch.from_numpy(w_out.astype(np.float64)).to(device, dtype))
        producer.bias = nn.Parameter(torch.from_numpy(b_out.astype(np.float64)).to(device, dtype))
    return None
