"""The backend contract: say whether you can run here, list the configurations to time, open sessions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from foldnorm.errors import BackendUnavailableError

Source = Literal["onnx", "module"]


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

    def require(self, backend: str) -> None:
        """Raise `BackendUnavailableError` naming `backend`, the reason and the install hint, unless available."""
        if not self.ok:
            raise BackendUnavailableError(f"{backend} {self.message()}")


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for; each backend turns the parts it understands into configurations."""

    ort_opt: tuple[str, ...] = ("disabled", "all")
    threads: int = 0
    precisions: tuple[str, ...] = ("fp32", "fp16")


class Session(Protocol):
    """A loaded model, ready to run."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return the outputs in graph order as host arrays."""
        ...

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Move feeds to where `run_timed` wants them (the device), once."""
        ...

    def run_timed(self, prepared: Any) -> None:
        """Queue one run on feeds from `prepare`, leaving results where they are (for timing)."""
        ...

    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on CPU)."""
        ...

    def device_timer(self) -> Callable[[], float] | None:
        """A function returning the device time (s) of the last `run_timed`, or None to use wall time."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """Peak memory this session used where the runtime can tell, else None."""
        ...

    def close(self) -> None:
        """Release the session's resources."""
        ...


class Backend(Protocol):
    """A runtime that opens models: ONNX files (`source="onnx"`) or PyTorch modules (`source="module"`)."""

    name: str
    description: str
    source: Source

    def availability(self) -> Availability:
        """Whether this backend can run here; never raises for a missing package or device."""
        ...

    def configs(self, options: RunOptions) -> list[dict[str, Any]]:
        """The configurations to time (each one is passed to `open` as keyword options)."""
        ...

    def open(self, model: Any, **options: Any) -> Session:
        """Load `model` (a path for `source="onnx"`, an `nn.Module` for `source="module"`); return a session."""
        ...


class HostSession:
    """Defaults for sessions that run on the host: feeds as they are, wall-clock timing, no memory figure."""

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Host feeds need no preparation."""
        return dict(feeds)

    def synchronize(self) -> None:
        """Host runs are synchronous."""

    def device_timer(self) -> Callable[[], float] | None:
        """No device clock: the timing loop measures wall time."""
        return None

    def peak_memory_bytes(self) -> int | None:
        """Not measurable per session on the host."""
        return None


def config_label(config: Mapping[str, Any]) -> str:
    """`opt=all,threads=2` from a configuration (zero/empty values and the precision, its own column, left out)."""
    return ",".join(f"{k}={v}" for k, v in config.items() if k != "precision" and v not in (0, None, ""))
