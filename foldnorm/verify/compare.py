"""Equivalence of two ONNX models: numbers on ONNX Runtime (CPU, optimizations disabled), and structure.

Errors are measured per output: `max_abs = max |candidate - reference|`, and `max_rel = max_abs / scale`
where `scale = max |reference|` (relative to the reference output's scale, so near-zero elements do not
blow it up). An element is out of tolerance when `|candidate - reference| > atol + rtol * scale`; a NaN or
Inf where the reference is finite ("introduced") always counts as out of tolerance.

Default tolerances follow the reference output's dtype (`DEFAULT_TOLERANCES`, rtol/atol): float64 1e-9/1e-12,
float32 1e-4/1e-6, float16 1e-2/1e-3, bfloat16 5e-2/1e-2; integer and bool outputs must match exactly. A
quantized (QDQ) reference is compared in steps of each output's quantizer instead (`verify.quantized`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from foldnorm.errors import InputSpecError, ModelMismatchError, first_line
from foldnorm.onnxgraph.external import has_weights_on_disk
from foldnorm.onnxgraph.inputs import InputSpec, Shape, input_specs, load_feeds, make_feeds, output_specs
from foldnorm.onnxgraph.modelio import ModelLike, load_model, model_label, needs_external_data
from foldnorm.verify.quantized import QDQ_STEPS, is_quantized, outliers_allowed, output_steps, step_tolerance
from foldnorm.verify.structure import StructureReport, compare_structure

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
    #: the output's quantization step when the reference is a quantized (QDQ) model and tolerances count steps.
    quant_step: float | None = None
    #: elements that may be out of tolerance (a quantized reference: `verify.quantized.QDQ_OUTLIERS` of them).
    allowed: int = 0

    @property
    def ok(self) -> bool:
        """Within tolerance (but for `allowed` elements) and no NaN/Inf that the reference does not have."""
        return self.mismatched - self.nonfinite_introduced <= self.allowed and self.nonfinite_introduced == 0


@dataclass
class VerifyResult:
    """The outcome of comparing a candidate model with a reference model."""

    reference: str
    candidate: str
    batch_sizes: list[int]
    seed: int
    samples: int = 1
    inputs: str | None = None
    outputs: list[OutputDiff] = field(default_factory=list)
    structure: StructureReport | None = None

    @property
    def numerics_ok(self) -> bool:
        """Every output within tolerance, no NaN/Inf introduced."""
        return all(o.ok for o in self.outputs)

    @property
    def ok(self) -> bool:
        """Numerics within tolerance and every protected normalization of the reference intact."""
        return self.numerics_ok and (self.structure is None or self.structure.intact)

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
        if self.structure is not None and not self.structure.intact:
            tail += "; protected normalizations changed"
        over = f"inputs from {self.inputs}" if self.inputs else f"batch sizes {self.batch_sizes}"
        return (f"{verdict}: max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g} "
                f"over {over}{tail}")

    def details(self) -> str:
        """A few readable lines: one per output, the structure, and the summary."""
        lines = []
        for o in self.outputs:
            lines.append(f"  {o.name} ({o.dtype}): max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}, "
                         f"{o.mismatched}/{o.total} outside rtol={o.rtol:g} atol={o.atol:g}{_in_steps(o)}, "
                         f"NaN/Inf introduced {o.nonfinite_introduced}  {'ok' if o.ok else 'FAIL'}")
        if self.structure is not None:
            lines.append(f"  {self.structure.summary()}")
        return "\n".join([self.summary(), *lines])

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "batch_sizes": self.batch_sizes,
            "seed": self.seed,
            "samples": self.samples,
            "inputs": self.inputs,
            "ok": self.ok,
            "numerics_ok": self.numerics_ok,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "outputs": [asdict(o) | {"ok": o.ok} for o in self.outputs],
            "structure": self.structure.to_dict() if self.structure else None,
            "summary": self.summary(),
        }


def _in_steps(diff: OutputDiff) -> str:
    """` (4 steps of 0.005)` for an output compared in quantization steps, else nothing."""
    if not diff.quant_step:
        return ""
    return f" ({diff.atol / diff.quant_step:g} steps of {diff.quant_step:.3g}; {diff.allowed} may be outside)"


def measure_error(
    reference: np.ndarray, candidate: np.ndarray, rtol: float | None = None, atol: float | None = None
) -> tuple[float, float, int, int]:
    """`(max_abs, max_rel, mismatched, nonfinite_introduced)` of `candidate` against `reference`.

    A tolerance left as None is the default for the reference's dtype (`tolerances_for`).
    """
    rtol, atol = tolerances_for(np.asarray(reference).dtype, rtol, atol)
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


def check_interface(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    """Raise `ModelMismatchError` unless both models have the same input and output names, types and shapes.

    Static dims must agree; a dim that is symbolic on either side is not compared.
    """
    for kind, ref_specs, cand_specs in (("input", input_specs(reference), input_specs(candidate)),
                                        ("output", output_specs(reference), output_specs(candidate))):
        ref_names, cand_names = [s.name for s in ref_specs], [s.name for s in cand_specs]
        if ref_names != cand_names:
            raise ModelMismatchError(
                f"the models have different {kind}s (reference {ref_names}, candidate {cand_names}); compare "
                "two versions of the same model"
            )
        for r, c in zip(ref_specs, cand_specs):
            if r.elem_type != c.elem_type or not _dims_agree(r.dims, c.dims):
                raise ModelMismatchError(
                    f"{kind} {r.name!r} is {_describe(r)} in the reference but {_describe(c)} in the candidate; "
                    "compare two versions of the same model"
                )


def _dims_agree(a: tuple[int | str | None, ...], b: tuple[int | str | None, ...]) -> bool:
    if not a or not b:
        return True  # an unknown shape on either side
    if len(a) != len(b):
        return False
    return all(not (isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0 and x != y) for x, y in zip(a, b))


def _describe(spec: InputSpec) -> str:
    dims = ",".join(str(d) if d not in (None, 0) else "?" for d in spec.dims)
    return f"{onnx.helper.tensor_dtype_to_string(spec.elem_type).removeprefix('TensorProto.').lower()}[{dims}]"


def _session_source(source: ModelLike, model: onnx.ModelProto, workdir: Path, name: str) -> str | bytes:
    """What ONNX Runtime opens: the file itself, the serialized model, or a copy written to `workdir`."""
    if not isinstance(source, onnx.ModelProto):
        return str(source)
    if not has_weights_on_disk(model) and not needs_external_data(model):
        return model.SerializeToString()
    from foldnorm.onnxgraph.modelio import save_model

    return str(save_model(model, workdir / f"{name}.onnx", external_data=True))


def _run_all(source: ModelLike, model: onnx.ModelProto, workdir: Path, role: str, label: str,
             feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of `model` for every feed, one session at a time (so two big models are never both loaded)."""
    from foldnorm.bench.backends.ort_cpu import OrtSession

    with OrtSession(_session_source(source, model, workdir, role)) as session:
        try:
            return [session.run(f) for f in feeds]
        except Exception as exc:  # ORT raises untyped errors for inputs the graph cannot take
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise InputSpecError(f"{label}: ONNX Runtime cannot run the {role} on these inputs ({first_line(exc)}); "
                                 "give shapes the model accepts (--shape NAME:1x3x224x224)") from None


def compare_models(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 0,
    samples: int = 1,
    shapes: Mapping[str, Shape] | None = None,
    inputs: str | os.PathLike | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    structure: bool = True,
) -> VerifyResult:
    """Run `reference` and `candidate` on the same inputs with ONNX Runtime and compare every output.

    Both accept a path or an `onnx.ModelProto`. Inputs are `samples` seeded random draws per batch size
    (shapes from the model, `shapes` for dynamic dims), or the arrays of the `.npz` file `inputs`.
    Tolerances default per output dtype (`DEFAULT_TOLERANCES`). With `structure` the result also says
    whether every GroupNorm/LayerNorm/InstanceNorm of the reference is intact in the candidate, and how
    many BatchNorms each side has. Models with different interfaces raise `ModelMismatchError`.
    """
    if samples < 1 or any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise InputSpecError(f"batch sizes {list(batch_sizes)} and samples {samples} must be positive; "
                             "use e.g. batch_sizes=(1, 4), samples=1")
    # Files are read without their weights (ONNX Runtime opens the files themselves).
    ref_model = load_model(reference, keep_weights_on_disk=True)
    cand_model = load_model(candidate, keep_weights_on_disk=True)
    check_interface(ref_model, cand_model)
    if inputs is not None:
        feeds = [load_feeds(inputs, ref_model)]
        first = next(iter(feeds[0].values()), np.zeros(()))
        batches = [int(first.shape[0])] if first.ndim else []
    else:
        feeds = [make_feeds(ref_model, batch, seed + k * samples + j, shapes)
                 for k, batch in enumerate(batch_sizes) for j in range(samples)]
        batches = list(batch_sizes)
    result = VerifyResult(model_label(reference), model_label(candidate), batches, seed, samples,
                          str(inputs) if inputs is not None else None)
    if structure:
        result.structure = compare_structure(ref_model, cand_model)
    names = [o.name for o in ref_model.graph.output]
    steps = output_steps(ref_model) if rtol is None and atol is None and is_quantized(ref_model) else None
    with tempfile.TemporaryDirectory(prefix="foldnorm-verify-") as tmp:
        expected = _run_all(reference, ref_model, Path(tmp), "reference", result.reference, feeds)
        got = _run_all(candidate, cand_model, Path(tmp), "candidate", result.candidate, feeds)
    for i, name in enumerate(names):
        dtype = expected[0][i].dtype
        step: float | None = None
        if steps is not None and np.issubdtype(dtype, np.floating):
            r, a = step_tolerance(steps.get(name), [e[i] for e in expected])
            step = a / QDQ_STEPS
        else:
            r, a = tolerances_for(dtype, rtol, atol)
        rows = [measure_error(e[i], g[i], r, a) for e, g in zip(expected, got)]
        result.outputs.append(OutputDiff(
            name=name,
            dtype=np.dtype(dtype).name,
            max_abs=max(row[0] for row in rows),
            max_rel=max(row[1] for row in rows),
            mismatched=sum(row[2] for row in rows),
            total=sum(e[i].size for e in expected),
            rtol=r,
            atol=a,
            nonfinite_introduced=sum(row[3] for row in rows),
            quant_step=step,
            allowed=outliers_allowed(sum(e[i].size for e in expected)) if step is not None else 0,
        ))
    return result
