"""SIGTERM and SIGHUP handled like Ctrl-C: an exception that unwinds the stack, so every temporary file is
removed on the way out, and an exit status of 128 + the signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP).

The library installs nothing by itself: the CLI (and a directory fold's worker processes) call
`signals_as_interrupts()`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised where the program was (a `KeyboardInterrupt`, so cleanup runs the same)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The interrupt `exc` is, or was raised from or while handling (a library may wrap it in its own error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def signal_name(exc: KeyboardInterrupt) -> str:
    """The name of the signal behind the interrupt (SIGINT for Ctrl-C)."""
    return signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"


def _raise(signum: int, frame: FrameType | None) -> None:
    for other in HANDLED:  # a second signal must not interrupt the cleanup the first one started
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def raise_on_signals() -> dict[int, Any]:
    """From now on SIGTERM and SIGHUP raise `Interrupted`; returns the handlers they had."""
    return {s: signal.signal(s, _raise) for s in HANDLED}


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Interrupted` (the previous handlers come back after).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = raise_on_signals()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block (a cleanup), SIGINT, SIGTERM and SIGHUP wait: the first that arrives is handled as it
    would have been once the block is done, so that an interrupt never stops a cleanup half-way.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[signal.Signals] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signal.Signals(signum)))
                for s in (signal.SIGINT, *HANDLED)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        handler = previous[caught[0]]
        if callable(handler):
            handler(caught[0], None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(caught[0])
