"""Fold every model of a directory, in parallel processes; one bad file never stops the others."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foldnorm.errors import FoldnormError, OutputPathError
from foldnorm.fold.options import FoldOptions
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import check_output_path

log = logging.getLogger(__name__)


@dataclass
class DirectoryItem:
    """The outcome for one file: the fold summary, or the error that stopped it."""

    input: str
    output: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


@dataclass
class DirectoryResult:
    """All files of one directory run, in file name order."""

    input_dir: str
    output_dir: str
    items: list[DirectoryItem] = field(default_factory=list)

    @property
    def failed(self) -> list[DirectoryItem]:
        """The files that could not be folded."""
        return [i for i in self.items if not i.ok]

    @property
    def ok(self) -> bool:
        """Every file folded and verified."""
        return not self.failed

    def summary(self) -> str:
        """One line: how many files folded, how many failed."""
        done = len(self.items) - len(self.failed)
        tail = f"; {len(self.failed)} failed: {', '.join(Path(i.input).name for i in self.failed)}" \
            if self.failed else ""
        return f"folded {done}/{len(self.items)} models from {self.input_dir} into {self.output_dir}{tail}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"input_dir": self.input_dir, "output_dir": self.output_dir, "ok": self.ok,
                "items": [i.to_dict() for i in self.items], "summary": self.summary()}


def _fold_one(src: str, dst: str, verify: bool, options: FoldOptions, in_place: bool,
              shapes: Mapping[str, Shape] | None, seed: int, tolerances: tuple[float | None, float | None]
              ) -> DirectoryItem:
    from foldnorm.workflows import fold_file

    try:
        result = fold_file(src, dst, verify=verify, options=options, in_place=in_place, shapes=shapes,
                           seed=seed, rtol=tolerances[0], atol=tolerances[1])
    except FoldnormError as exc:
        return DirectoryItem(src, dst, False, str(exc))
    except Exception as exc:  # a bug on one model must not hide the results of the others
        log.exception("folding %s failed", src)
        return DirectoryItem(src, dst, False, f"internal error {type(exc).__name__}: {exc} (a foldnorm bug; "
                         "please report it with this model)")
    verified = f"; verify: {result.verify.summary()}" if result.verify else ""
    return DirectoryItem(src, dst, True, result.report.summary() + verified)


def fold_directory(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    jobs: int = 1,
    verify: bool = True,
    options: FoldOptions | None = None,
    in_place: bool = False,
    progress: Callable[[DirectoryItem], None] | None = None,
    shapes: Mapping[str, Shape] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
) -> DirectoryResult:
    """Fold every `*.onnx` in `input_dir` into `output_dir` (same file names), `jobs` files at a time.

    Each file is folded (and verified) in its own worker process; a file that fails is recorded in the
    result with its error and the others go on. `progress` is called as each file finishes; `shapes` sizes
    dynamic input dims, `seed` seeds the inputs of the verification and `rtol`/`atol` are its tolerances (see
    `fold_file`).
    `output_dir` must exist; it may be `input_dir` only with `in_place`.
    """
    src_dir, dst_dir = Path(input_dir), Path(output_dir)
    if jobs < 1:
        raise FoldnormError(f"jobs={jobs}: not a positive number of parallel jobs; give 1 or more")
    if not dst_dir.is_dir():
        raise OutputPathError(f"{dst_dir}: not an existing directory, and the input {src_dir} is a directory "
                              "(models keep their names); create it, or give one .onnx file to fold.")
    sources = sorted(p for p in src_dir.glob("*.onnx") if p.is_file())
    if not sources:
        raise FoldnormError(f"{src_dir}: holds no .onnx files; give a directory of ONNX models.")
    pairs = [(str(p), str(dst_dir / p.name)) for p in sources]
    check_output_path(pairs[0][1], pairs[0][0], in_place=in_place)  # a shared mistake fails once, up front
    opts = options or FoldOptions()
    items: dict[str, DirectoryItem] = {}

    def done(item: DirectoryItem) -> None:
        items[item.input] = item
        if progress is not None:
            progress(item)

    if jobs == 1:
        for src, dst in pairs:
            done(_fold_one(src, dst, verify, opts, in_place, shapes, seed, (rtol, atol)))
    else:
        # spawn: workers start clean (no inherited ONNX Runtime threads or state).
        with ProcessPoolExecutor(max_workers=min(jobs, len(pairs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures: dict[Future[DirectoryItem], tuple[str, str]] = {
                pool.submit(_fold_one, s, d, verify, opts, in_place, shapes, seed, (rtol, atol)): (s, d)
                for s, d in pairs}
            try:
                for future in as_completed(futures):
                    try:
                        done(future.result())
                    except BrokenProcessPool as exc:  # a worker died (killed, out of memory, crashed)
                        done(DirectoryItem(*futures[future], False, f"the worker process died ({exc}); fold this "
                                       "file alone to see why"))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return DirectoryResult(str(src_dir), str(dst_dir), [items[s] for s, _ in pairs])
