"""`foldnorm fold DIR -o OUTDIR --jobs N`: a directory of models, one line per file and a summary."""

from __future__ import annotations

from pathlib import Path

from foldnorm.directory import fold_directory
from foldnorm.errors import FoldnormError
from foldnorm.fold.options import FoldOptions
from foldnorm.onnxgraph.inputs import Shape

from .render.common import Format
from .render.fold import directory_progress, render_fold_directory


def fold_dir(input_dir: Path, output_dir: Path, *, jobs: int, verify: bool, options: FoldOptions, in_place: bool,
             fmt: Format, report_path: Path | None, shapes: dict[str, Shape], seed: int) -> None:
    """Fold every model of `input_dir` (`report_path`: the per-model JSON); exit 1 when any of them failed."""
    result = fold_directory(input_dir, output_dir, jobs=jobs, verify=verify, options=options, in_place=in_place,
                            progress=directory_progress, shapes=shapes, seed=seed,
                            other_outputs=[report_path] if report_path else [])
    render_fold_directory(result, fmt, report_path)
    if not result.ok:
        raise FoldnormError(f"{len(result.failed)} of {len(result.items)} models failed; see the lines above")
