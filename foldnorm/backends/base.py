"""The backend contract: say whether you can run here, then open sessions on ONNX files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this machine; when not, why and how to fix it."""

    ok: bool
    reason: str = ""
    install_hint: str = ""

    def message(self) -> str:
        """`unavailable: <reason>; install: <hint>` (or `available`)."""
        if self.ok:
            return "available"
        hint = f"; install: {self.install_hint}" if self.install_hint else ""
        return f"unavailable: {self.reason}{hint}"


class Session(Protocol):
    """A loaded model, ready to run."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return the outputs in graph order as host arrays."""
        ...

    def run_timed(self, feeds: Mapping[str, Any]) -> None:
        """Run once with feeds from `prepare`, leaving results on the device (for timing)."""
        ...

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        """Move feeds to where `run_timed` wants them (the device), once."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on CPU)."""
        ...

    def close(self) -> None:
        """Release the session's resources."""
        ...


class Backend(Protocol):
    """A runtime that can open ONNX models, e.g. ONNX Runtime on CPU."""

    name: str
    description: str

    def availability(self) -> Availability:
        """Whether this backend can run here; never raises for a missing package."""
        ...

    def open(self, path: str, **options: Any) -> Session:
        """Load the ONNX file at `path` and return a session."""
        ...
