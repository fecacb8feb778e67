"""File-level workflows the CLI calls: one function per command, returning a data object."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldnorm.errors import VerificationError
from foldnorm.fold.engine import fold_model
from foldnorm.fold.options import FoldOptions
from foldnorm.fold.report import FoldReport
from foldnorm.onnxgraph.external import data_files
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import check_output_path, load_model, stage_model
from foldnorm.onnxgraph.outputs import check_distinct
from foldnorm.onnxgraph.store import TensorStore
from foldnorm.verify.compare import VerifyResult, compare_models


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
) -> FoldFileResult:
    """Fold the model at `input_path` and write it to `output_path` (None: do not write).

    With `verify` (the default) the folded model is compared with the original on ONNX Runtime first; on a
    mismatch nothing is written and `VerificationError` is raised with the result in `.result`.
    `output_path` may equal `input_path` only with `in_place` (the file is then replaced atomically).
    `shapes` sizes the verification inputs' dynamic dims other than the batch axis, as in `compare_models`.
    `other_outputs` are files the caller will write too (a JSON report): no output may be an input file (the
    model, its data files) or another output, and this is checked before anything is written.
    """
    for path in other_outputs:
        check_output_path(path)
    if output_path is not None:
        check_output_path(output_path, input_path, in_place=in_place)
    # Weights stay on disk (inline ones in the input file itself): the engine reads the ones it folds, keeps
    # the new ones in a store, and the writer copies every one of them into the output, file to file.
    with TensorStore() as store:
        model = load_model(input_path, keep_weights_on_disk=True)
        _check_distinct(input_path, output_path, other_outputs, data_files(model), in_place)
        folded = fold_model(model, options=options, in_place=True, store=store)
        del model
        result = FoldFileResult(str(input_path), None, folded.report, None)
        if output_path is None:
            if verify:
                result.verify = compare_models(input_path, folded.model, batch_sizes=batch_sizes, seed=seed,
                                               shapes=shapes)
                _raise_if_different(result)
            return result
        staged = stage_model(folded.model, output_path, in_place=in_place, inputs=(input_path,),
                             keep_in_memory=False)
    try:
        del folded  # the staged file holds it now; ONNX Runtime reads it from there
        if verify:
            result.verify = compare_models(input_path, staged.path, batch_sizes=batch_sizes, seed=seed,
                                           shapes=shapes)
            result.verify.candidate = str(output_path)
            _raise_if_different(result)
        result.output = str(staged.commit())
    finally:
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


def _raise_if_different(result: FoldFileResult) -> None:
    if result.verify is not None and not result.verify.ok:
        raise VerificationError(f"the folded model differs from {result.input}: {result.verify.summary()}; "
                                "nothing was written (please report this model)", result)
