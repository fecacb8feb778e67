"""Equivalence of two ONNX models: numbers on ONNX Runtime (CPU, optimizations disabled), and structure.

Errors are measured per output in float64 (`verify.measure`): `max_abs = max |candidate - reference|`, and
`max_rel = max_abs / scale` where `scale = max |reference|` (relative to the reference output's scale, so
near-zero elements do not blow it up). An element is out of tolerance when `|candidate - reference| > atol +
rtol * scale`; a NaN or Inf where the reference is finite ("introduced") always counts as out of tolerance.

Default tolerances follow the candidate output's dtype (`DEFAULT_TOLERANCES`, rtol/atol): float64 1e-9/1e-12,
float32 1e-4/1e-6, float16 1e-2/1e-3, bfloat16 5e-2/1e-2; integer and bool outputs must match exactly. Models of
different float precisions compare (fp32 against fp16): inputs are drawn in the reference's dtypes and cast for
the candidate. A task-level `metric` (top-K agreement, cosine) can replace the element-wise verdict for float
outputs. A
quantized (QDQ) reference is compared in steps of each output's quantizer instead (`verify.quantized`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from foldnorm.errors import InputSpecError, ModelMismatchError
from foldnorm.onnxgraph.atomicfile import temporary_directory
from foldnorm.onnxgraph.inputs import (
    InputSpec,
    Shape,
    cast_feed,
    concrete_shape,
    feed_bytes,
    fit_feed,
    input_specs,
    make_feeds,
    name_the_only_input,
    output_specs,
)
from foldnorm.onnxgraph.modelio import ModelLike, load_model, model_label
from foldnorm.verify.localize import Localization, localize
from foldnorm.verify.measure import (
    DEFAULT_TOLERANCES,
    MIN_COSINE,
    ErrorStats,
    Metric,
    check_tolerances,
    is_float,
    measure_error,
    tolerances_for,
)
from foldnorm.verify.noise import NoiseFloor, noise_floor
from foldnorm.verify.ortrun import outputs
from foldnorm.verify.quantized import QDQ_STEPS, is_quantized, outliers_allowed, output_steps, step_tolerance
from foldnorm.verify.structure import StructureReport, compare_structure
from foldnorm.verify.tensors import feed_shapes, side_by_side, tensor_passes

__all__ = ["DEFAULT_TOLERANCES", "OutputDiff", "VerifyResult", "check_tolerances", "compare_models", "measure_error",
           "tolerances_for"]

# Random inputs of one verification (all batch sizes and samples), and the reference outputs it keeps.
DATA_BUDGET = 2 << 30

Feed = dict[str, np.ndarray]
Inputs = str | os.PathLike | Sequence[Mapping[str, np.ndarray]]


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
    #: the metric that decides (`max-rel`: the element-wise tolerance), and its worst score over all runs
    metric: str = "max-rel"
    score: float | None = None
    metric_ok: bool | None = None
    #: the reference's own max rel change under a 1-ulp input perturbation, when it was measured
    noise_floor: float | None = None
    within_noise: bool = False

    @property
    def ok(self) -> bool:
        """No NaN/Inf that the reference does not have, and within tolerance (but for `allowed` elements), or the
        metric, or the noise floor."""
        if self.nonfinite_introduced:
            return False
        if self.metric_ok is not None:
            return self.metric_ok
        return self.mismatched <= self.allowed or self.within_noise


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
    #: the batch sizes asked for (`batch_sizes` are those that ran: a static batch axis keeps its size)
    requested_batch_sizes: list[int] = field(default_factory=list)
    metric: str = "max-rel"
    #: errors of the intermediate tensors asked for (`tensors=`), by name
    tensors: dict[str, ErrorStats] = field(default_factory=dict)
    localization: Localization | None = None
    noise: NoiseFloor | None = None

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

    def ran(self) -> str:
        """What the models ran on: the input file, or the batch sizes (and why they differ from those asked)."""
        if self.inputs:
            return f"inputs from {self.inputs}"
        text = f"batch sizes {self.batch_sizes}"
        if self.requested_batch_sizes and self.requested_batch_sizes != self.batch_sizes:
            text += f" (the model's batch axis is static; {self.requested_batch_sizes} asked)"
        return text

    def summary(self) -> str:
        """One line: pass/fail and the worst errors."""
        verdict = "equivalent" if self.ok else "NOT equivalent"
        bad = [o.name for o in self.outputs if not o.ok]
        tail = f"; failing outputs: {', '.join(bad)}" if bad else ""
        if self.structure is not None and not self.structure.intact:
            tail += "; protected normalizations changed"
        scored = [o for o in self.outputs if o.score is not None]
        if scored:
            tail += f"; {self.metric} {min(o.score or 0.0 for o in scored):.6g}"
        if any(o.within_noise and o.mismatched for o in self.outputs) and self.noise is not None:
            tail += f"; within {self.noise.multiple:g}x the reference's noise floor {self.noise.max_rel:.3g}"
        return (f"{verdict}: max abs error {self.max_abs:.3g}, max rel error {self.max_rel:.3g} "
                f"over {self.ran()}{tail}")

    def details(self) -> str:
        """A few readable lines: one per output, the structure, and the summary."""
        lines = []
        for o in self.outputs:
            lines.append(f"  {o.name} ({o.dtype}): max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}, "
                         f"{o.mismatched}/{o.total} outside rtol={o.rtol:g} atol={o.atol:g}{_in_steps(o)}, "
                         f"NaN/Inf introduced {o.nonfinite_introduced}  {'ok' if o.ok else 'FAIL'}")
        if self.structure is not None:
            lines.append(f"  {self.structure.summary()}")
        if self.localization is not None:
            lines.extend(f"  {line}" for line in self.localization.lines())
        return "\n".join([self.summary(), *lines])

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "batch_sizes": self.batch_sizes,
            "requested_batch_sizes": self.requested_batch_sizes,
            "seed": self.seed,
            "samples": self.samples,
            "inputs": self.inputs,
            "metric": self.metric,
            "ok": self.ok,
            "numerics_ok": self.numerics_ok,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "outputs": [asdict(o) | {"ok": o.ok} for o in self.outputs],
            "structure": self.structure.to_dict() if self.structure else None,
            "tensors": {name: asdict(s) | {"ok": s.ok} for name, s in self.tensors.items()},
            "localization": self.localization.to_dict() if self.localization else None,
            "noise_floor": self.noise.to_dict() if self.noise else None,
            "summary": self.summary(),
        }


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def _in_steps(diff: OutputDiff) -> str:
    """` (4 steps of 0.005)` for an output compared in quantization steps, else nothing."""
    if not diff.quant_step:
        return ""
    return f" ({diff.atol / diff.quant_step:g} steps of {diff.quant_step:.3g}; {diff.allowed} may be outside)"


def check_interface(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    """Raise `ModelMismatchError` unless both models have the same input and output names, types and shapes.

    Static dims must agree; a dim that is symbolic on either side is not compared. Float types may differ (an
    fp16 candidate of an fp32 reference).
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
            same_type = r.elem_type == c.elem_type or {r.elem_type, c.elem_type} <= _FLOAT_TYPES
            if not same_type or not _dims_agree(r.dims, c.dims):
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


@dataclass(frozen=True)
class Draws:
    """The feeds of a verification. Each iteration draws them anew, one at a time: random inputs of every batch
    size and sample are never all held at once."""

    make: Callable[[], Iterator[Feed]]
    #: the batch sizes the feeds really have (axis 0 of the first input that has one), each once, in order
    batch_sizes: list[int]
    #: the shape of every input of each feed, in order (known without drawing them)
    shapes: list[dict[str, Shape]]

    def __iter__(self) -> Iterator[Feed]:
        return self.make()

    def cast_for(self, model: onnx.ModelProto) -> Draws:
        """The same feeds with float arrays cast to `model`'s input dtypes (fp32 data for an fp16 model)."""
        return Draws(lambda: (cast_feed(feed, model) for feed in self.make()), self.batch_sizes, self.shapes)


def verification_draws(model: onnx.ModelProto, *, batch_sizes: Sequence[int] = (1, 2), seed: int = 0,
                       samples: int = 1, shapes: Mapping[str, Shape] | None = None,
                       inputs: Inputs | None = None) -> Draws:
    """The feeds a verification of `model` runs: `samples` seeded random draws per batch size (drawn when
    iterated, within `DATA_BUDGET`), or real data (an `.npz`/Polygraphy `.json` file, or a sequence of
    `{input name: array}` dicts), checked against the model."""
    if samples < 1 or any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise InputSpecError(f"batch sizes {list(batch_sizes)} and samples {samples} must be positive; "
                             "use e.g. batch_sizes=(1, 4), samples=1")
    if inputs is None:
        shapes = name_the_only_input(dict(shapes or {}), input_specs(model))
        _check_input_budget(model, batch_sizes, samples, shapes)

        def draws() -> Iterator[Feed]:
            for k, batch in enumerate(batch_sizes):
                for j in range(samples):
                    yield make_feeds(model, batch, seed + k * samples + j, shapes)

        specs = input_specs(model)
        drawn = [{s.name: concrete_shape(s, b, shapes.get(s.name)) for s in specs} for b in batch_sizes
                 for _ in range(samples)]
        return Draws(draws, list(dict.fromkeys(_batch_run(model, b, shapes) for b in batch_sizes)), drawn)
    if isinstance(inputs, (str, os.PathLike)):
        from foldnorm.verify.data import read_feeds

        where, given = str(inputs), read_feeds(inputs)
    else:
        where, given = "the given inputs", [dict(feed) for feed in inputs]
    if not given:
        raise InputSpecError(f"{where}: holds no feed; give at least one {{input name: array}}")
    loaded = [fit_feed(feed, model, where) for feed in given]
    sizes = [next((int(a.shape[0]) for a in feed.values() if a.ndim), 1) for feed in loaded]
    return Draws(lambda: iter(loaded), list(dict.fromkeys(sizes)), feed_shapes(loaded))


def _batch_run(model: onnx.ModelProto, batch: int, shapes: Mapping[str, Shape] | None) -> int:
    """The batch size random draws for `batch` really have: a static batch axis keeps its own size."""
    for spec in input_specs(model):
        shape = concrete_shape(spec, batch, (shapes or {}).get(spec.name))
        if shape:
            return int(shape[0])
    return batch


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
    inputs: Inputs | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    structure: bool = True,
    metric: Metric | str = "max-rel",
    min_cosine: float = MIN_COSINE,
    tensors: Sequence[str] = (),
    localize_failure: bool = False,
    noise: bool = False,
    save_inputs: str | os.PathLike | None = None,
    save_outputs: str | os.PathLike | None = None,
) -> VerifyResult:
    """Run `reference` and `candidate` on the same inputs with ONNX Runtime and compare every output.

    Both accept a path or an `onnx.ModelProto`. Inputs are `samples` seeded random draws per batch size
    (shapes from the model, `shapes` for dynamic dims), or real data: `inputs` is an `.npz` or Polygraphy
    `.json` file, or a sequence of `{input name: array}` feeds. Inputs are drawn in the reference's dtypes and
    cast for the candidate. Tolerances default per candidate output dtype (`DEFAULT_TOLERANCES`); `metric`
    (`max-rel`, `top1`, `topk:K`, `cosine` with `min_cosine`) decides float outputs. With `structure` the result
    also says whether every GroupNorm/LayerNorm/InstanceNorm of the reference is intact in the candidate.
    `tensors` names intermediate tensors both models compute, whose errors go into `result.tensors`;
    `localize_failure` searches, when outputs fail, for the first tensor where the models diverge
    (`result.localization`); `noise` measures, when an output misses its tolerance, the reference's own noise
    floor and accepts errors within a small multiple of it (`verify.noise`). `save_inputs` and `save_outputs`
    write the feeds and both models' outputs (`.npz` or `.json`). Models with different interfaces raise
    `ModelMismatchError`.
    """
    chosen = metric if isinstance(metric, Metric) else Metric.parse(metric, min_cosine)
    check_tolerances(rtol, atol)
    # Files are read without their weights (ONNX Runtime opens the files themselves).
    ref_model = load_model(reference, keep_weights_on_disk=True)
    cand_model = load_model(candidate, keep_weights_on_disk=True)
    check_interface(ref_model, cand_model)
    draws = verification_draws(ref_model, batch_sizes=batch_sizes, seed=seed, samples=samples, shapes=shapes,
                               inputs=inputs)
    cand_draws = draws.cast_for(cand_model)
    result = VerifyResult(model_label(reference), model_label(candidate), draws.batch_sizes, seed, samples,
                          str(inputs) if isinstance(inputs, (str, os.PathLike)) else None,
                          requested_batch_sizes=list(batch_sizes) if inputs is None else [], metric=chosen.label)
    if structure:
        result.structure = compare_structure(ref_model, cand_model)
    if save_inputs is not None:
        from foldnorm.verify.data import write_feeds

        write_feeds(save_inputs, list(draws))
    names = [o.name for o in ref_model.graph.output]
    steps = output_steps(ref_model) if rtol is None and atol is None and is_quantized(ref_model) else None
    with temporary_directory() as tmp:
        labels = (result.reference, result.candidate)
        got: Iterator[list[np.ndarray]]
        if tensors:  # the outputs and the first pass of tensors in one side-by-side run, the rest after
            first, *rest = tensor_passes(ref_model, tensors, draws.shapes)
            expected, both = side_by_side(ref_model, cand_model, first, draws, cand_draws, tmp, result.tensors,
                                          rtol=rtol, atol=atol, labels=labels, keep=names, run=outputs)
            for names_in_pass in rest:
                side_by_side(ref_model, cand_model, names_in_pass, draws, cand_draws, tmp, result.tensors,
                             rtol=rtol, atol=atol, labels=labels, run=outputs)
            got = iter(both)
        else:  # one session at a time: two big models are never both loaded, the candidate's outputs not kept
            expected = _kept(outputs(reference, ref_model, tmp, "reference", labels[0], iter(draws)))
            got = outputs(candidate, cand_model, tmp, "candidate", labels[1], iter(cand_draws))
        checks = [_OutputCheck.start(name, [e[i] for e in expected], _output_dtype(cand_model, i, expected[0][i]),
                                     chosen, steps, (rtol, atol)) for i, name in enumerate(names)]
        saved: list[list[np.ndarray]] = []
        for e, g in zip(expected, got):
            for i, check in enumerate(checks):
                check.add(e[i], g[i])
            if save_outputs is not None:
                saved.append(g)
        if save_outputs is not None:
            from foldnorm.verify.data import write_outputs

            write_outputs(save_outputs, names, {"reference": expected, "candidate": saved})
        result.outputs = [check.diff() for check in checks]
        if noise and steps is None and any(not o.ok and o.metric_ok is None and o.nonfinite_introduced == 0
                                           for o in result.outputs):
            result.noise = noise_floor(reference, ref_model, tmp, draws, expected, names, seed)
            result.noise.judge(result.outputs)
        if localize_failure and not result.numerics_ok:
            failing = [o.name for o in result.outputs if not o.ok]
            result.localization = localize(ref_model, cand_model, failing, draws, cand_draws, tmp,
                                           rtol=rtol, atol=atol)
    return result


def _output_dtype(model: onnx.ModelProto, index: int, example: np.ndarray) -> np.dtype:
    """The dtype output `index` has in `model` (bfloat16 for one that ran as float32 here), else `example`'s."""
    elem = model.graph.output[index].type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else example.dtype


@dataclass
class _OutputCheck:
    """One output's errors accumulated run by run, and its metric's worst score."""

    stats: ErrorStats
    metric: Metric
    step: float | None
    score: float | None = None

    @classmethod
    def start(cls, name: str, references: list[np.ndarray], dtype: np.dtype, metric: Metric,
              steps: dict[str, float] | None, overrides: tuple[float | None, float | None]) -> _OutputCheck:
        """Tolerances in steps of the output's quantizer for a quantized reference (`steps`), else by `dtype` (the
        candidate's) with the user's overrides."""
        step = None
        if steps is not None and np.issubdtype(references[0].dtype, np.floating):
            rtol, atol = step_tolerance(steps.get(name), references)
            step = atol / QDQ_STEPS
        else:
            rtol, atol = tolerances_for(dtype, *overrides)
        scored = not metric.elementwise and is_float(references[0].dtype)
        return cls(ErrorStats(name, np.dtype(dtype).name, rtol, atol), metric, step, 1.0 if scored else None)

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """One run's pair of arrays."""
        self.stats.add(reference, candidate)
        if self.score is not None:
            self.score = min(self.score, self.metric.score(reference, candidate))

    def diff(self) -> OutputDiff:
        """The output's `OutputDiff`."""
        s = self.stats
        return OutputDiff(s.name, s.dtype, s.max_abs, s.max_rel, s.mismatched, s.total, s.rtol, s.atol,
                          s.nonfinite_introduced, quant_step=self.step,
                          allowed=outliers_allowed(s.total) if self.step is not None else 0, metric=self.metric.label,
                          score=self.score, metric_ok=None if self.score is None else self.metric.passes(self.score))
