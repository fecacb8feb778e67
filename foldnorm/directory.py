"""Fold every model of a directory, in parallel processes; one bad file never stops the others."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foldnorm.errors import FoldnormError, OutputPathError
from foldnorm.fold.options import FoldOptions
from foldnorm.interrupts import exit_status, raise_on_signals
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import check_output_path, model_files
from foldnorm.onnxgraph.outputs import check_distinct, resolved

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
              shapes: Mapping[str, Shape] | None, seed: int, other_outputs: Sequence[str]) -> DirectoryItem:
    from foldnorm.workflows import fold_file

    try:
        result = fold_file(src, dst, verify=verify, options=options, in_place=in_place, shapes=shapes,
                           seed=seed, other_outputs=other_outputs)
    except FoldnormError as exc:
        return DirectoryItem(src, dst, False, str(exc))
    except Exception as exc:  # a bug on one model must not hide the results of the others
        log.exception("folding %s failed", src)
        return DirectoryItem(src, dst, False, f"internal error {type(exc).__name__}: {exc} (a foldnorm bug; "
                         "please report it with this model)")
    verified = f"; verify: {result.verify.summary()}" if result.verify else ""
    return DirectoryItem(src, dst, True, result.report.summary() + verified)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _start_worker() -> None:
    """A worker leaves Ctrl-C to its parent (an idle worker that is terminated just ends)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fold_in_worker(*args: Any) -> DirectoryItem:
    """`_fold_one` in a worker: terminated mid-fold, it removes its temporary files and ends."""
    previous = raise_on_signals()
    try:
        return _fold_one(*args)
    except KeyboardInterrupt as exc:  # the fold removed its files on the way here
        os._exit(exit_status(exc))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_other_outputs(other_outputs: Sequence[str], pairs: list[tuple[str, str]], src_dir: Path) -> None:
    """Refuse, before any work, an extra output (a report) that is an input, an output or an input's data file."""
    if not other_outputs:
        return
    inputs: list[tuple[str, str | Path]] = [("an input", s) for s, _ in pairs]
    if any(resolved(o).is_relative_to(resolved(src_dir)) and Path(o).exists() for o in other_outputs):
        inputs += [("an input's data file", f) for s, _ in pairs for f in model_files(s)[1:]]
    outputs = [*(("an output", d) for _, d in pairs), *(("an output's data file", d + ".data") for _, d in pairs)]
    check_distinct([*(("another output", o) for o in other_outputs), *outputs], inputs,
                   replaces=[(d, s) for s, d in pairs])


def _pool_items(pool: ProcessPoolExecutor, futures: dict[Future[DirectoryItem], tuple[str, str]],
                done: Callable[[DirectoryItem], None]) -> None:
    try:
        for future in as_completed(futures):
            try:
                done(future.result())
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory, crashed)
                done(DirectoryItem(*futures[future], False, f"the worker process died ({exc}); fold this "
                                   "file alone to see why"))
    except BaseException:  # Ctrl-C or a termination signal: stop the workers, each removes its temporary files
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    other_outputs: Sequence[str | os.PathLike] = (),
) -> DirectoryResult:
    """Fold every `*.onnx` in `input_dir` into `output_dir` (same file names), `jobs` files at a time.

    Each file is folded (and verified) in its own worker process; a file that fails is recorded in the
    result with its error and the others go on. `progress` is called as each file finishes; `shapes` sizes
    dynamic input dims and `seed` seeds the inputs of the verification (see `fold_file`).
    `output_dir` must exist; it may be `input_dir` only with `in_place`. `other_outputs` are files the caller
    will write too (a report): none may be an input, an input's data file or an output.
    Ctrl-C (SIGINT) reaches only this process: the workers ignore it, and are terminated (each removing its
    temporary files) when this process is interrupted.
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
    extra = [str(o) for o in other_outputs]
    _check_other_outputs(extra, pairs, src_dir)
    opts = options or FoldOptions()
    items: dict[str, DirectoryItem] = {}

    def done(item: DirectoryItem) -> None:
        items[item.input] = item
        if progress is not None:
            progress(item)

    if jobs == 1:
        for src, dst in pairs:
            done(_fold_one(src, dst, verify, opts, in_place, shapes, seed, extra))
        return DirectoryResult(str(src_dir), str(dst_dir), [items[s] for s, _ in pairs])
    # spawn: workers start clean (no inherited ONNX Runtime threads or state). They are started while this
    # process ignores SIGINT, so they ignore it from their first instruction on.
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(pairs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        futures = {pool.submit(_fold_in_worker, s, d, verify, opts, in_place, shapes, seed, extra): (s, d)
                   for s, d in pairs}
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    _pool_items(pool, futures, done)
    return DirectoryResult(str(src_dir), str(dst_dir), [items[s] for s, _ in pairs])
