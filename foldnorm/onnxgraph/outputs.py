"""Output paths, checked before any work is done.

An output must be in an existing, writable directory; an existing output must be a regular file (never a
directory, device, pipe or socket); and no output may be, after symlinks are resolved, an input (a model or
one of its data files) or another output of the same run, unless it replaces that input on purpose
(`--in-place`). Every OS error (a name too long, a permission) is one `OutputPathError` line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from foldnorm.errors import OutputPathError, first_line
from foldnorm.onnxgraph.atomicfile import refuse_non_regular, temp_name

PathLike = str | os.PathLike


def check_output_path(output: PathLike, *inputs: PathLike, in_place: bool = False) -> Path:
    """Validate an output path before any work is done; refuse to overwrite an input unless `in_place`."""
    out = Path(output)
    try:
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise OutputPathError(f"{out}: directory {parent} does not exist; create it first.")
        refuse_non_regular(out)
        if out.exists() and not out.stat().st_mode & 0o222:
            raise OutputPathError(f"{out}: the file is read-only; make it writable or choose another output path.")
        _probe(out, parent)
        for inp in inputs:
            if not in_place and out.exists() and resolved(out) == resolved(inp):
                raise OutputPathError(
                    f"{out}: output is the input file; choose another output path (or pass --in-place)."
                )
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot be written ({first_line(exc)}); choose another output path.") \
            from None
    return out


def _probe(out: Path, parent: Path) -> None:
    """Create and remove a file in `parent`: the one sure test that it can be written (root, read-only mounts)."""
    probe = temp_name(parent)
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise OutputPathError(
            f"{out}: directory {parent} is not writable ({first_line(exc)}); choose another output path."
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def resolved(path: PathLike) -> Path:
    """`path` with every symlink resolved (it need not exist); an OS error is an `OutputPathError`."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:
        raise OutputPathError(f"{path}: cannot be resolved ({first_line(exc)}); choose another path.") from None


def check_distinct(outputs: Sequence[tuple[str, PathLike]], inputs: Sequence[tuple[str, PathLike]], *,
                   replaces: Collection[tuple[PathLike, PathLike]] = ()) -> None:
    """Raise `OutputPathError` when an output is, after resolving symlinks, an input or another output.

    `outputs` and `inputs` are `(role, path)` pairs ("the report", "the input's data file" ...) for the
    message. `replaces` lists `(output, input)` pairs that may coincide: an in-place fold replaces its input.
    Existing outputs that are not regular files are refused too.
    """
    allowed = {(resolved(o), resolved(i)) for o, i in replaces}
    read = {resolved(path): role for role, path in reversed(inputs)}
    written: dict[Path, str] = {}
    for role, path in outputs:
        target = resolved(path)
        refuse_non_regular(Path(path))
        clash = written.get(target) or (None if (target, target) in allowed else read.get(target))
        if clash is not None:
            raise OutputPathError(f"{path}: {role} would overwrite {clash} ({target}); give it another path.")
        written[target] = role
