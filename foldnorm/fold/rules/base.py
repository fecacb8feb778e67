"""The rule contract: what a fold rule declares, what it is handed, and how it says no.

Every rule is one class in one file of this package, listed once in the registry (`RULES` in
`__init__.py`); the engine knows rules only from there. A rule declares its `name` (what `skip`/`only`
and `--list-rules` show), a one-line `summary`, its `position` and the `op_types` it looks at:

- "subject": recognises a node to fold besides BatchNormalization (a per-channel Mul by a constant ...) and
  gives its affine map; `op_types` are the node's;
- "after": folds the subject into the neighbour that produces the subject's input (Conv → BN);
- "before": folds it into the neighbour that consumes the subject's output (BN → Conv);
- "alone": rewrites a subject that has no neighbour to fold into (tried last); `op_types` are the subject's.

A neighbour rule also declares the `kinds` of subject it folds (BatchNorms, a subject rule's nodes, or both).
`check(...)` returns a `Plan` (everything computed, nothing changed yet) or raises `Refusal(reason)`;
`plan.apply()` then rewrites the graph. Refusing is not an error: the engine records a `skipped` entry with
the sentence. The subject's map reaches a rule as `ChannelParams`. A "block" rule's plan lists the
normalization nodes it removes besides the node itself (`absorbed`); each gets a `folded` record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import onnx

from foldnorm.errors import InvalidModelError
from foldnorm.fold.bn_math import ChannelAffine
from foldnorm.fold.context import FoldContext
from foldnorm.onnxgraph.graph import attr

if TYPE_CHECKING:  # the options module reads the registry, which imports the rules
    from foldnorm.fold.options import FoldOptions

Position = Literal["block", "subject", "after", "before", "alone"]


class Refusal(Exception):
    """Raised by a rule that leaves a node alone; `reason` is the sentence the report records."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Plan:
    """A checked fold, ready to apply: `apply()` performs the rewrite."""

    target: onnx.NodeProto
    apply: Callable[[], None]
    note: str = ""
    #: a fold into quantized (QDQ) parameters: exact, bias-rounded, moved or requantized (`fold.quantized`).
    quantization: str = ""
    #: normalization nodes the rewrite removes besides its subject (a "block" rule's merged BatchNorms).
    absorbed: tuple[onnx.NodeProto, ...] = ()


@dataclass(frozen=True)
class ChannelParams:
    """A per-channel affine map resolved to constants, and the axis it acts on.

    `axis >= 0` counts from the front of the tensor (BatchNorm: 1), `axis < 0` from the back (a constant
    `[C, 1, 1]` is -3), and `axis=None` means the map is the same for every channel (a scalar constant).
    """

    affine: ChannelAffine
    param_dtype: np.dtype
    axis: int | None = 1
    #: rank of the constant operand; it must not exceed the tensor's rank (broadcasting would grow it).
    const_rank: int = 0
    #: the node the map comes from; for a BatchNorm a channel-count mismatch means an invalid model.
    source: str = ""
    strict: bool = True

    @property
    def channels(self) -> int:
        """Channel count of the map (1 for a scalar map)."""
        return self.affine.channels

    def on_axis(self, rank: int | None, channel_axis: int, channels: int) -> ChannelAffine:
        """The map as `channels` entries when it acts on `channel_axis` of a rank-`rank` tensor.

        `channel_axis` may be negative (MatMul's last axis); `rank=None` means the rank is unknown.
        Raises `Refusal` when the map acts elsewhere or cannot be proved to act there.
        """
        if rank is not None and self.const_rank > rank:
            raise Refusal(f"the constant has rank {self.const_rank}, more than the tensor's rank {rank}")
        if rank is None and self.const_rank > 1:
            raise Refusal("the tensor's rank is unknown, so broadcasting the constant cannot be proved harmless")
        if self.axis is None:
            affine = self.affine
            return ChannelAffine(np.broadcast_to(affine.scale, (channels,)).copy(),
                                 np.broadcast_to(affine.shift, (channels,)).copy())
        if self.axis == channel_axis:
            same = True
        elif rank is None:
            same = False
        else:
            same = self.axis % rank == channel_axis % rank
        if not same:
            where = f"axis {self.axis}" if rank is None else f"axis {self.axis % rank} of {rank}"
            target = f"axis {channel_axis}" if rank is None else f"axis {channel_axis % rank}"
            proof = "" if rank is not None else " (the rank is unknown, so this cannot be proved)"
            raise Refusal(f"it acts on {where}, not on the producer's output-channel {target}{proof}")
        if self.channels != channels:
            if self.strict:
                raise InvalidModelError(
                    f"BatchNormalization {self.source} has {self.channels} parameters but the op it meets has "
                    f"{channels} channels on that axis; fix the model (re-export it) before folding."
                )
            raise Refusal(f"it has {self.channels} channels but the producer has {channels} output channels")
        return self.affine


class Rule:
    """What every fold rule declares. Subclass `BlockRule`, `SubjectRule`, `NeighbourRule` or `AloneRule`."""

    #: the rule's name for `skip`/`only` and `--list-rules` (its file name with dashes).
    name: ClassVar[str]
    #: one line for `--list-rules`: what it folds into what.
    summary: ClassVar[str]
    position: ClassVar[Position]
    #: op types of the node the rule looks at (the neighbour; for "subject" and "alone" rules the subject).
    op_types: ClassVar[tuple[str, ...]]

    def wanted(self, options: FoldOptions) -> bool:
        """Whether the options ask for this rule at all (`skip`/`only` aside); most rules always run."""
        return True

    def accepts(self, ctx: FoldContext, node: onnx.NodeProto) -> bool:
        """Whether `node` (of one of `op_types`) has the structure the rule works on (cheap; no reasons)."""
        return True


class BlockRule(Rule, ABC):
    """Rewrites a block of nodes that ends at one node into a single op, before any per-node fold.

    The engine offers every node of a graph, in graph order, to the block rules first: `accepts` says (cheaply,
    without reasons) whether the node ends a block the rule rewrites; a node it does not accept gets no record.
    """

    position: ClassVar[Position] = "block"
    #: the `kind` of the node's record in the report.
    kind: ClassVar[str]

    @abstractmethod
    def check(self, ctx: FoldContext, node: onnx.NodeProto) -> Plan:
        """A plan rewriting the block that ends at `node`; raises `Refusal` with the reason when it cannot."""


class SubjectRule(Rule, ABC):
    """Recognises a node to fold and gives its affine map; "after" rules then fold it into its producer."""

    position: ClassVar[Position] = "subject"
    #: the `kind` of the node's record in the report.
    kind: ClassVar[str]

    @abstractmethod
    def operand(self, ctx: FoldContext, node: onnx.NodeProto) -> str | None:
        """The data input of `node` when `node` is a candidate, else None (no record at all)."""

    @abstractmethod
    def params(self, ctx: FoldContext, node: onnx.NodeProto) -> ChannelParams:
        """The affine map of a candidate `node`; raises `Refusal` when it is no per-channel map."""


class NeighbourRule(Rule, ABC):
    """Folds a subject into one neighbour: the producer of its input ("after") or the consumer of its output."""

    position: ClassVar[Position] = "after"
    #: the subjects it folds, by the `kind` of their record: "batchnorm", or a subject rule's kind ("affine").
    kinds: ClassVar[tuple[str, ...]] = ("batchnorm", "affine")

    def has_fixed_weights(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """Whether `neighbour` has constant weights (input 1) a per-channel map could fold into."""
        return len(neighbour.input) > 1 and ctx.constant(neighbour.input[1]) is not None

    @abstractmethod
    def check(self, ctx: FoldContext, subject: onnx.NodeProto, neighbour: onnx.NodeProto,
              params: ChannelParams) -> Plan:
        """A plan folding `subject` into `neighbour`; raises `Refusal` with the reason when it cannot."""


class AloneRule(Rule, ABC):
    """Rewrites a subject that no neighbour took (tried last)."""

    position: ClassVar[Position] = "alone"

    @abstractmethod
    def check(self, ctx: FoldContext, subject: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan rewriting `subject` on its own; raises `Refusal` with the reason when it cannot."""


def is_float(array: np.ndarray) -> bool:
    """Whether `array` holds a floating type (bfloat16 included)."""
    return bool(np.issubdtype(array.dtype, np.floating)) or array.dtype.name == "bfloat16"


def group_of(node: onnx.NodeProto) -> int:
    """The `group` attribute of a (transposed) convolution."""
    return int(attr(node, "group", 1))
