"""The user-facing switches of the fold engine, checked against the rule registry when they are made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from foldnorm.errors import UnknownRuleError
from foldnorm.fold.rules import RULES

#: What becomes of a BatchNorm with nothing to fold into: kept, or lowered to one Mul and one Add.
StandaloneBN = Literal["keep", "affine"]


def rule_names() -> tuple[str, ...]:
    """The names of the fold rules, in the registry's order of preference."""
    return tuple(rule.name for rule in RULES)


def check_rule_names(names: Sequence[str], option: str) -> tuple[str, ...]:
    """`names` as a tuple (a single name may be given as a string); an unknown name raises `UnknownRuleError`."""
    given = (names,) if isinstance(names, str) else tuple(names)
    valid = rule_names()
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise UnknownRuleError(f"{option}: no fold rule is named {', '.join(map(repr, unknown))}; "
                               f"use one of {', '.join(valid)} (foldnorm fold --list-rules)")
    return given


@dataclass(frozen=True)
class FoldOptions:
    """User-facing switches of the fold engine.

    `standalone_bn="affine"` lowers a BatchNorm with nothing to fold into to one Mul and one Add (the
    `bn-affine` rule). `requantize=True` lets a fold into quantized (QDQ) weights that cannot keep their
    integers requantize them, with the error in the report (without it such a fold is refused).
    `inputs_as_constants=True` reads initializers that are also listed as graph inputs (defaults a caller may
    override, from IR version 4 on) as constants, and the folded model no longer lists them as inputs; below
    IR 4 they are always read as constants, as ONNX Runtime reads them.
    `skip` turns the named rules off; `only`, when given, turns every other rule off.
    Unknown rule names raise `UnknownRuleError` (a `FoldnormError`) listing the valid ones.
    """

    standalone_bn: StandaloneBN = "keep"
    skip: Sequence[str] = ()
    only: Sequence[str] = ()
    requantize: bool = False
    inputs_as_constants: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip", check_rule_names(self.skip, "skip"))
        object.__setattr__(self, "only", check_rule_names(self.only, "only"))

    def turned_off(self, rule: str) -> str | None:
        """Why rule `rule` may not run under `skip`/`only` (a sentence for the report), or None when it may."""
        if rule in self.skip:
            return f"rule {rule} is turned off (--skip {rule})"
        if self.only and rule not in self.only:
            return f"rule {rule} is turned off (not in --only {', '.join(self.only)})"
        return None
