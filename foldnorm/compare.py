"""Numeric equivalence of two ONNX models on ONNX Runtime (CPU, optimizations disabled).

Errors are measured per output: `max_abs = max |candidate - reference|`, and `max_rel = max_abs / scale`
where `scale = max |reference|` (relative to the reference output's scale, so near-zero elements do not
blow it up). An element is out of tolerance when `|candidate - reference| > atol + rtol * scale`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from foldnorm.errors import InputSpecError
from foldnorm.inputs import Shape, make_feeds
from foldnorm.modelio import EXTERNAL_DATA_THRESHOLD, ModelLike, load_model, model_label

# Default tolerances by the reference output's dtype: (rtol, atol).
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-6),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
}


@dataclass
class OutputDiff:
    """How one output of the candidate differs from the reference, over all batch sizes tried."""

    name: str
    dtype: str
    max_abs: float
    max_rel: float
    mismatched: int
    total: int
    rtol: float
    atol: float
    nonfinite_introduced: int

    @property
    def ok(self) -> bool:
        """Within tolerance and no NaN/Inf that the reference does not have."""
        return self.mismatched == 0 and self.nonfinite_introduced == 0


@dataclass
class VerifyResult:
    """The outcome of comparing a candidate model with a reference model."""

    reference: str
    candidate: str
    batch_sizes: list[int]
    seed: int
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every output within tolerance."""
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        """Largest absolute error over all outputs."""
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        """Largest scale-relative error over all outputs."""
        return max((o.max_rel for o in self.outputs), default=0.0)

    def summary(self) -> str:
        """One line: pass/fail and the worst errors."""
        verdict = "equivalent" if self.ok else "NOT equivalent"
        bad = [o.name for o in self.outputs if not o.ok]
        tail = f"; failing outputs: {', '.join(bad)}" if bad else ""
        return (f"{verdict}: max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g} "
                f"over batch sizes {self.batch_sizes}{tail}")

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "batch_sizes": self.batch_sizes,
            "seed": self.seed,
            "ok": self.ok,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "outputs": [asdict(o) | {"ok": o.ok} for o in self.outputs],
            "summary": self.summary(),
        }


def measure_error(
    reference: np.ndarray, candidate: np.ndarray, rtol: float, atol: float
) -> tuple[float, float, int, int]:
    """`(max_abs, max_rel, mismatched, nonfinite_introduced)` of `candidate` against `reference`."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return float("inf"), float("inf"), int(max(ref.size, cand.size)), 0
    ref_finite = np.isfinite(ref)
    introduced = int(np.count_nonzero(ref_finite & ~np.isfinite(cand)))
    both = ref_finite & np.isfinite(cand)
    if not np.any(both):
        return 0.0, 0.0, introduced, introduced
    diff = np.abs(cand[both] - ref[both])
    scale = float(np.max(np.abs(ref[both])))
    max_abs = float(np.max(diff))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    mismatched = int(np.count_nonzero(diff > atol + rtol * scale)) + introduced
    return max_abs, max_rel, mismatched, introduced


def tolerances_for(dtype: np.dtype, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The (rtol, atol) to use for an output of `dtype`, with user overrides."""
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def _session_source(model: onnx.ModelProto, workdir: Path, name: str) -> str | bytes:
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        return model.SerializeToString()
    from foldnorm.modelio import save_model

    return str(save_model(model, workdir / f"{name}.onnx", external_data=True))


def compare_models(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 0,
    shapes: Mapping[str, Shape] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> VerifyResult:
    """Run `reference` and `candidate` on the same seeded inputs with ONNX Runtime and compare outputs.

    Both accept a path or an `onnx.ModelProto`. Tolerances default per output dtype
    (`DEFAULT_TOLERANCES`).
    """
    from foldnorm.backends.ort_cpu import OrtSession

    ref_model, cand_model = load_model(reference), load_model(candidate)
    ref_outputs = [o.name for o in ref_model.graph.output]
    cand_outputs = [o.name for o in cand_model.graph.output]
    if ref_outputs != cand_outputs:
        raise InputSpecError(
            f"the models have different outputs ({ref_outputs} vs {cand_outputs}); compare models with the "
            "same interface"
        )
    result = VerifyResult(model_label(reference), model_label(candidate), list(batch_sizes), seed)
    with tempfile.TemporaryDirectory(prefix="foldnorm-verify-") as tmp:
        ref_sess = OrtSession(_session_source(ref_model, Path(tmp), "reference"))
        cand_sess = OrtSession(_session_source(cand_model, Path(tmp), "candidate"))
        per_output: dict[str, list[tuple[float, float, int, int, int, np.dtype]]] = {n: [] for n in ref_outputs}
        for k, batch in enumerate(batch_sizes):
            feeds = make_feeds(ref_model, batch, seed + k, shapes)
            for name, ref_out, cand_out in zip(ref_outputs, ref_sess.run(feeds), cand_sess.run(feeds)):
                r, a = tolerances_for(ref_out.dtype, rtol, atol)
                per_output[name].append((*measure_error(ref_out, cand_out, r, a), ref_out.size, ref_out.dtype))
        for name, rows in per_output.items():
            dtype = rows[0][5]
            r, a = tolerances_for(dtype, rtol, atol)
            result.outputs.append(OutputDiff(
                name=name,
                dtype=np.dtype(dtype).name,
                max_abs=max(row[0] for row in rows),
                max_rel=max(row[1] for row in rows),
                mismatched=sum(row[2] for row in rows),
                total=sum(row[4] for row in rows),
                rtol=r,
                atol=a,
                nonfinite_introduced=sum(row[3] for row in rows),
            ))
    return result
