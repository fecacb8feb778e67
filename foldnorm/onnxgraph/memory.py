"""Handing freed memory back to the system between the phases of a run.

glibc's malloc keeps the pages of freed blocks that sit in the middle of its heap. onnx.checker and shape
inference (C++) free hundreds of MB that way on a graph of many small tensors, and so does protobuf when it drops
messages; Python's small-object allocator cannot reuse those pages (it maps arenas of its own), so the Python
structures built next (the graph index) would stack on them. `release_freed_memory` returns them.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` (None on other C libraries and systems)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here, not at import: `import foldnorm` stays light

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_memory() -> None:
    """Return the free pages of the C heap to the system (a no-op where the C library cannot)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
