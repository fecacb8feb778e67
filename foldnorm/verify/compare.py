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

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from foldnorm.errors import InputSpecError, ModelMismatchError
from foldnorm.onnxgraph.atomicfile import temporary_directory
from foldnorm.onnxgraph.inputs import InputSpec, Shape, feed_bytes, input_specs, load_feeds, make_feeds, output_specs
from foldnorm.onnxgraph.modelio import ModelLike, load_model, model_label
from foldnorm.verify.ortrun import outputs, reported_dtype
from foldnorm.verify.quantized import QDQ_STEPS, is_quantized, outliers_allowed, output_steps, step_tolerance
from foldnorm.verify.structure import StructureReport, compare_structure

# Random inputs of one verification (all batch sizes and samples), and the reference outputs it keeps.
DATA_BUDGET = 2 << 30

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
    """The (rtol, atol) to use for an output of `dtype`, with user overrides (finite numbers >= 0)."""
    check_tolerances(rtol, atol)
    default_rtol, default_atol = DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def check_tolerances(rtol: float | None, atol: float | None) -> None:
    """Raise `InputSpecError` unless each given tolerance is a finite number >= 0 (NaN would pass anything)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputSpecError(f"{name}={value}: a tolerance is a finite number >= 0; give e.g. {name}=1e-4")


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


def _check_input_budget(model: onnx.ModelProto, batch_sizes: Sequence[int], samples: int,
                        shapes: Mapping[str, Shape] | None) -> None:
    """Refuse, before anything is drawn, random inputs over `DATA_BUDGET` in all."""
    need = samples * sum(feed_bytes(model, b, shapes) for b in batch_sizes)
    if need > DATA_BUDGET:
        raise InputSpecError(f"the verification's random inputs would take {need / 2**30:.3g} GiB ({samples} "
                             f"sample(s) at batch sizes {list(batch_sizes)[:8]}), over its {DATA_BUDGET >> 30} GiB "
                             "limit; use fewer samples, smaller batch sizes or smaller shapes")


def _kept(runs: Iterator[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The reference outputs of every draw, refused once they pass `DATA_BUDGET`."""
    kept: list[list[np.ndarray]] = []
    held = 0
    for result in runs:
        held += sum(np.asarray(o).nbytes for o in result)
        if held > DATA_BUDGET:
            raise InputSpecError(f"the reference outputs of {len(kept) + 1} draws take over "
                                 f"{DATA_BUDGET >> 30} GiB; use fewer samples or smaller batch sizes")
        kept.append(result)
    return kept


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
    check_tolerances(rtol, atol)
    # Files are read without their weights (ONNX Runtime opens the files themselves).
    ref_model = load_model(reference, keep_weights_on_disk=True)
    cand_model = load_model(candidate, keep_weights_on_disk=True)
    check_interface(ref_model, cand_model)
    if inputs is not None:
        loaded = load_feeds(inputs, ref_model)
        first = next(iter(loaded.values()), np.zeros(()))
        batches = [int(first.shape[0])] if first.ndim else []

        def draws() -> Iterator[dict[str, np.ndarray]]:
            yield loaded
    else:
        _check_input_budget(ref_model, batch_sizes, samples, shapes)
        batches = list(batch_sizes)

        def draws() -> Iterator[dict[str, np.ndarray]]:  # drawn one at a time, for each model in turn
            for k, batch in enumerate(batch_sizes):
                for j in range(samples):
                    yield make_feeds(ref_model, batch, seed + k * samples + j, shapes)
    result = VerifyResult(model_label(reference), model_label(candidate), batches, seed, samples,
                          str(inputs) if inputs is not None else None)
    if structure:
        result.structure = compare_structure(ref_model, cand_model)
    names = [o.name for o in ref_model.graph.output]
    steps = output_steps(ref_model) if rtol is None and atol is None and is_quantized(ref_model) else None
    rows: list[list[tuple[float, float, int, int]]] = [[] for _ in names]
    with temporary_directory() as tmp:
        expected = _kept(outputs(reference, ref_model, tmp, "reference", result.reference, draws()))
        tolerances = [_tolerances(ref_model, i, [e[i] for e in expected], steps, rtol, atol) for i in range(len(names))]
        for e, got in zip(expected, outputs(candidate, cand_model, tmp, "candidate", result.candidate, draws())):
            for i, row in enumerate(rows):
                row.append(measure_error(e[i], got[i], *tolerances[i][:2]))
    for i, name in enumerate(names):
        r, a, step = tolerances[i]
        result.outputs.append(OutputDiff(
            name=name,
            dtype=reported_dtype(ref_model, i, expected[0][i].dtype).name,
            max_abs=max(row[0] for row in rows[i]),
            max_rel=max(row[1] for row in rows[i]),
            mismatched=sum(row[2] for row in rows[i]),
            total=sum(e[i].size for e in expected),
            rtol=r,
            atol=a,
            nonfinite_introduced=sum(row[3] for row in rows[i]),
            quant_step=step,
            allowed=outliers_allowed(sum(e[i].size for e in expected)) if step is not None else 0,
        ))
    return result


def _tolerances(model: onnx.ModelProto, index: int, references: list[np.ndarray], steps: dict[str, float] | None,
                rtol: float | None, atol: float | None) -> tuple[float, float, float | None]:
    """(rtol, atol, quantization step or None) for output `index`: in steps of its quantizer for a quantized
    reference (`steps`), else the defaults of the type it has in the model, with the user's overrides."""
    actual = references[0].dtype
    if steps is not None and np.issubdtype(actual, np.floating):
        r, a = step_tolerance(steps.get(model.graph.output[index].name), references)
        return r, a, a / QDQ_STEPS
    return (*tolerances_for(reported_dtype(model, index, actual), rtol, atol), None)
