"""`foldnorm fold DIR -o OUTDIR --jobs N`: a directory of models, one line per file and a summary."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.directory import DirectoryItem, fold_directory
from foldnorm.errors import FoldnormError
from foldnorm.fold.options import FoldOptions
from foldnorm.onnxgraph.inputs import Shape

from .render import emit_json, info, write_json


def fold_dir(input_dir: Path, output_dir: Path, *, jobs: int, verify: bool, options: FoldOptions, in_place: bool,
             fmt: str, report_path: Path | None, shapes: dict[str, Shape], seed: int) -> None:
    """Fold every model of `input_dir` (`report_path`: the per-model JSON); exit 1 when any of them failed."""

    def progress(item: DirectoryItem) -> None:
        info(f"{'ok    ' if item.ok else 'FAILED'} {item.input}: {item.message}")

    result = fold_directory(input_dir, output_dir, jobs=jobs, verify=verify, options=options, in_place=in_place,
                            progress=progress, shapes=shapes, seed=seed,
                            other_outputs=[report_path] if report_path else [])
    if report_path is not None:
        write_json(report_path, result.to_dict())
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(result.summary())
    if not result.ok:
        raise FoldnormError(f"{len(result.failed)} of {len(result.items)} models failed; see the lines above")
