"""Temporary files and atomic writes: every file foldnorm writes goes to a temporary name, then is renamed.

Temporary names are recognisable, `.foldnorm-tmp-<pid>-XXXXXXXX`, with the pid of the process that made
them. A run that was killed (SIGKILL, a power cut) leaves them behind; the next run that writes into the
same directory removes those whose process is gone (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from foldnorm.errors import OutputPathError, first_line
from foldnorm.interrupts import deferred_signals

TEMP_PREFIX = ".foldnorm-tmp-"
_STALE = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


def temp_name(directory: Path, suffix: str = "") -> Path:
    """A new temporary name in `directory`, `.foldnorm-tmp-<pid>-<16 hex digits><suffix>`; nothing is created.

    Callers create it inside their own try block, so that an interrupt can never leave a file they do not
    know the name of.
    """
    return directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{suffix}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists, under another user
        return True
    return True


def sweep_stale(directory: Path) -> list[Path]:
    """Remove the temporary files and folders in `directory` left by foldnorm processes that no longer run.

    Returns what was removed. Symlinks are removed, never followed; errors are ignored (a file another
    user owns stays).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _STALE.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def temporary_directory() -> Iterator[Path]:
    """A temporary folder in the system's temp directory, removed afterwards (like `TemporaryDirectory`)."""
    parent = Path(tempfile.gettempdir())
    sweep_stale(parent)
    path = temp_name(parent)
    try:
        path.mkdir(mode=0o700)
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Remove the folder `path` and everything in it, if it exists; a signal waits until it is done."""
    with deferred_signals():
        shutil.rmtree(path, ignore_errors=True)


def refuse_non_regular(path: Path) -> None:
    """Raise `OutputPathError` if `path` exists and is not a regular file (a directory, device, pipe, socket).

    foldnorm replaces output files by renaming over them; it never replaces anything else (as root, a rename
    over `/dev/null` would turn the device into a file).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot be checked ({first_line(exc)}); choose another output path.") \
            from None
    if stat.S_ISDIR(mode):
        raise OutputPathError(f"{path}: is a directory; give a file name such as {path / 'model.onnx'}.")
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{path}: exists and is not a regular file (a device, pipe or socket); foldnorm "
                              "never replaces one: choose another output path.")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path (with `target`'s suffix) to write; on success it replaces `target`.

    An existing `target` that is not a regular file is refused, and any OS error (a missing directory, a name
    too long, a full disk) is an `OutputPathError` naming `target`.
    """
    out = Path(target)
    refuse_non_regular(out)
    sweep_stale(out.parent)
    tmp = temp_name(out.parent, out.suffix if len(out.suffix) <= 16 else "")
    try:
        yield tmp
        refuse_non_regular(out)
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot be written ({first_line(exc)}); choose another output path.") \
            from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
