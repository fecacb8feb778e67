"""The fold report: one record per normalization node. Its JSON form is the contract."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from foldnorm.fold.normalizations import NormCounts

Outcome = Literal["folded", "skipped", "kept"]


@dataclass
class FoldRecord:
    """What happened to one normalization node, and why."""

    op_type: str
    node: str
    kind: str
    outcome: Outcome
    reason: str
    target: str | None = None
    module: str | None = None
    graph: str = "main"
    #: a fold into quantized (QDQ) parameters: exact, bias-rounded, moved (a quantization point) or requantized.
    quantization: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data."""
        return asdict(self)


@dataclass
class FoldReport:
    """All records of one fold run, in graph order."""

    records: list[FoldRecord] = field(default_factory=list)
    #: sentences about the whole model (how its inputs were read ...).
    notes: list[str] = field(default_factory=list)

    def add(self, record: FoldRecord) -> None:
        """Append one record."""
        self.records.append(record)

    def counts(self) -> dict[str, int]:
        """How many records have each outcome."""
        c = Counter(r.outcome for r in self.records)
        return {k: c.get(k, 0) for k in ("folded", "skipped", "kept")}

    def by_kind(self, kind: str) -> list[FoldRecord]:
        """Records of one kind of normalization (e.g. "batchnorm")."""
        return [r for r in self.records if r.kind == kind]

    @property
    def norms(self) -> NormCounts:
        """The normalization nodes seen, by kind: what `survey` counts in the model before folding."""
        return NormCounts.of(r.kind for r in self.records)

    @property
    def batchnorm_total(self) -> int:
        """BatchNorm nodes seen (folded, skipped or kept)."""
        return self.norms.batchnorm

    @property
    def batchnorm_folded(self) -> int:
        """BatchNorm nodes folded away."""
        return sum(1 for r in self.by_kind("batchnorm") if r.outcome == "folded")

    @property
    def folded(self) -> int:
        """Nodes folded away."""
        return self.counts()["folded"]

    @property
    def protected_kept(self) -> int:
        """GroupNorm/LayerNorm/InstanceNorm (and BN standing for them) left intact: folding never touches them."""
        return self.norms.protected

    def summary(self) -> str:
        """One line: what was folded, skipped and kept."""
        c = self.counts()
        tails = self.by_kind("affine")
        tail_folded = sum(1 for r in tails if r.outcome == "folded")
        tail_text = f", {tail_folded}/{len(tails)} constant Mul/Add/Sub/Div folded" if tails else ""
        sums = self.by_kind("branches")
        if sums:
            tail_text += f", {sum(1 for r in sums if r.outcome == 'folded')}/{len(sums)} branch sums merged"
        quantized = self.quantization_counts()
        quant_text = ("; into quantized weights: " + ", ".join(f"{n} {label}" for label, n in quantized.items())
                      if quantized else "")
        return (
            f"{self.batchnorm_folded}/{self.batchnorm_total} BatchNorm folded{tail_text}; {c['folded']} folded, "
            f"{c['skipped']} skipped, {c['kept']} kept in all; {self.protected_kept} GroupNorm/LayerNorm/InstanceNorm "
            f"intact{quant_text}"
        )

    def quantization_counts(self) -> dict[str, int]:
        """Folds into quantized (QDQ) weights by label (exact, bias-rounded, moved, requantized), in that order."""
        c = Counter(r.quantization for r in self.records if r.outcome == "folded" and r.quantization)
        return {label: c[label] for label in ("exact", "bias-rounded", "moved", "requantized") if c[label]}

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "records": [r.to_dict() for r in self.records],
            "counts": self.counts(),
            "quantization": self.quantization_counts(),
            "summary": self.summary(),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The report as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)
