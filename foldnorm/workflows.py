"""File-level workflows the CLI calls: one function per command, returning a data object."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from foldnorm.errors import VerificationError
from foldnorm.fold.engine import fold_model
from foldnorm.fold.options import FoldOptions
from foldnorm.fold.report import FoldReport
from foldnorm.onnxgraph.external import data_files
from foldnorm.onnxgraph.graph import node_label
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import StagedModel, check_output_path, load_model, stage_model
from foldnorm.onnxgraph.outputs import check_distinct
from foldnorm.onnxgraph.stats import stored_bytes
from foldnorm.onnxgraph.store import TensorStore

if TYPE_CHECKING:
    from foldnorm.verify.compare import VerifyResult


@dataclass
class FoldFileResult:
    """A fold of one file: the report, the verification, and where the output went."""

    input: str
    output: str | None
    report: FoldReport
    verify: VerifyResult | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "input": self.input,
            "output": self.output,
            "report": self.report.to_dict(),
            "verify": self.verify.to_dict() if self.verify else None,
        }


@dataclass(frozen=True)
class _Checks:
    """How `fold_file` verifies: the inputs (batch sizes, seed, shapes of dynamic dims) and the tolerances."""

    batch_sizes: Sequence[int] = (1, 2)
    seed: int = 0
    shapes: Mapping[str, Shape] | None = None
    rtol: float | None = None
    atol: float | None = None


def fold_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None,
    *,
    verify: bool = True,
    options: FoldOptions | None = None,
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 0,
    in_place: bool = False,
    shapes: Mapping[str, Shape] | None = None,
    other_outputs: Sequence[str | os.PathLike] = (),
    rtol: float | None = None,
    atol: float | None = None,
) -> FoldFileResult:
    """Fold the model at `input_path` and write it to `output_path` (None: do not write).

    With `verify` (the default) the folded model is compared with the original on ONNX Runtime first; on a
    mismatch nothing is written and `VerificationError` is raised with the result in `.result` (where the models
    first diverge in `.result.verify.localization`). Each folded record gets the error measured where the fold
    took effect (`max_abs_err`, `max_rel_err`). With the default tolerances (`rtol`/`atol` None: per dtype), an
    output that misses them but stays within a small multiple of the original model's own noise floor passes
    (`verify.noise`); tolerances given are applied as they are.
    `output_path` may equal `input_path` only with `in_place` (the file is then replaced atomically).
    `shapes` sizes the verification inputs' dynamic dims other than the batch axis, as in `compare_models`.
    `other_outputs` are files the caller will write too (a JSON report): no output may be an input file (the
    model, its data files) or another output, and this is checked before anything is written.
    """
    checks = _Checks(batch_sizes, seed, shapes, rtol, atol)
    for path in other_outputs:
        check_output_path(path)
    if output_path is not None:
        check_output_path(output_path, input_path, in_place=in_place)
    # Weights stay on disk (inline ones in the input file itself): the engine reads the ones it folds, keeps
    # the new ones in a store, and the writer copies every one of them into the output, file to file.
    # `staged` is discarded in the same try that stages it: an interrupt at any point leaves no staged file.
    staged: StagedModel | None = None
    try:
        with TensorStore() as store:
            model = load_model(input_path, keep_weights_on_disk=True)
            data = data_files(model)
            _check_distinct(input_path, output_path, other_outputs, data, in_place)
            labels = _first_outputs(model) if verify else {}
            size = stored_bytes(input_path, data)
            folded = fold_model(model, options=options, in_place=True, store=store)
            del model
            report = folded.report
            if report.before is not None:
                report.before.file_bytes = size
            result = FoldFileResult(str(input_path), None, report, None)
            tensors = _record_tensors(report, labels, folded.model) if verify else {}
            if output_path is None:
                if verify:
                    _verify(result, input_path, folded.model, checks, tensors)
                return result
            # An input with external data gives an output with external data, even when every tensor that was
            # in its data files was rewritten (the output then holds none of them).
            staged = stage_model(folded.model, output_path, external_data=True if data else None,
                                 in_place=in_place, inputs=(input_path,), keep_in_memory=False)
        del folded  # the staged file holds it now; ONNX Runtime reads it from there
        if report.after is not None:
            report.after.file_bytes = sum(f.stat().st_size for f in staged.tmpdir.iterdir() if f.is_file())
        if verify:
            _verify(result, input_path, staged.path, checks, tensors, label=str(output_path))
        result.output = str(staged.commit())
    finally:
        if staged is not None:
            staged.discard()
    return result


def _check_distinct(input_path: str | os.PathLike, output_path: str | os.PathLike | None,
                    other_outputs: Sequence[str | os.PathLike], data: set[Path], in_place: bool) -> None:
    """No output may be the input, one of its data files, or another output (in place: the model's own pair)."""
    outputs: list[tuple[str, str | os.PathLike]] = [("another output", p) for p in other_outputs]
    replaces: list[tuple[str | os.PathLike, str | os.PathLike]] = []
    if output_path is not None:
        data_out = Path(output_path).with_name(Path(output_path).name + ".data")
        outputs = [("the output", output_path), ("the output's data file", data_out), *outputs]
        if in_place:
            replaces = [(output_path, input_path), *((data_out, d) for d in data)]
    inputs = [("the input", input_path), *(("the input's data file", d) for d in sorted(data))]
    check_distinct(outputs, inputs, replaces=replaces)


def _first_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """The first output of every main-graph node, by the node's report label."""
    return {node_label(n): n.output[0] for n in model.graph.node if n.output and n.output[0]}


def _record_tensors(report: FoldReport, before: dict[str, str], folded: onnx.ModelProto) -> dict[int, str]:
    """For each folded main-graph record (by position), the tensor both models compute where the fold took effect:
    the folded node's output when the folded model still computes it (the producer took over its name), else the
    output of the node it folded into."""
    from foldnorm.verify.tensors import produced_tensors  # (the verification's modules load only when it runs)

    after = _first_outputs(folded)
    computed = set(produced_tensors(folded)) & set(before.values())
    found = {}
    for i, record in enumerate(report.records):
        if record.outcome != "folded" or record.graph != "main":
            continue
        options = [before.get(record.node), after.get(record.target or "")]
        tensor = next((t for t in options if t in computed), None)
        if tensor is not None:
            found[i] = tensor
    return found


def _verify(result: FoldFileResult, reference: str | os.PathLike, candidate: onnx.ModelProto | str | os.PathLike,
            checks: _Checks, tensors: dict[int, str], label: str | None = None) -> None:
    """Compare, fill in the records' errors, raise `VerificationError` on a mismatch."""
    from foldnorm.verify.compare import compare_models

    result.verify = compare_models(reference, candidate, batch_sizes=checks.batch_sizes, seed=checks.seed,
                                   shapes=checks.shapes, rtol=checks.rtol, atol=checks.atol,
                                   tensors=sorted(set(tensors.values())), localize_failure=True,
                                   noise=checks.rtol is None and checks.atol is None)
    if label is not None:
        result.verify.candidate = label
    for i, tensor in tensors.items():
        stats = result.verify.tensors.get(tensor)
        if stats is not None:
            record = result.report.records[i]
            record.max_abs_err, record.max_rel_err, record.error_at = stats.max_abs, stats.max_rel, tensor
    if not result.verify.ok:
        verdict = result.verify
        why = (verdict.noise.sentence() if verdict.noise is not None and verdict.noise.unstable
               else "please report this model")
        where = ""
        if verdict.localization is not None and verdict.localization.tensor is not None:
            loc = verdict.localization
            where = f"; first divergence at {loc.tensor!r} ({loc.candidate_op} {loc.candidate_node})"
        raise VerificationError(f"the folded model differs from {result.input}: {verdict.summary()}{where}; "
                                f"nothing was written ({why})", result)
