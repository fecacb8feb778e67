"""The backend contract: say whether you can run here, list the configurations to time, open sessions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, TypeVar, get_args

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


OptLevel = Literal["disabled", "basic", "extended", "all"]
Precision = Literal["fp32", "fp16", "int8"]
OPT_LEVELS: tuple[OptLevel, ...] = get_args(OptLevel)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for; each backend turns the parts it understands into configurations.

    `threads` (0: the runtime's default) applies to CPU backends, `precisions` fp32/fp16 to GPU backends
    ("int8" makes the runner time an int8 QDQ pair too);
    `max_batch_size` (None: the benchmarked batch) and `cache_dir` (None: ~/.cache/foldnorm) to TensorRT;
    `cuda_graph` (replay each run from a captured CUDA graph) to ort-cuda, ort-trt and tensorrt.
    """

    ort_opt: tuple[OptLevel, ...] = ("disabled", "all")
    threads: int = 0
    precisions: tuple[Precision, ...] = ("fp32", "fp16")
    max_batch_size: int | None = None
    cache_dir: Path | str | None = None
    cuda_graph: bool = False


@dataclass(frozen=True)
class BenchInputs:
    """The inputs every configuration runs on: the shape of each input and whether its batch axis is dynamic."""

    shapes: Mapping[str, tuple[int, ...]]
    dynamic_batch: Mapping[str, bool]


@dataclass(frozen=True, kw_only=True)
class OpenOptions:
    """What one configuration opens a model with. Each backend family extends it with its own typed fields and
    names in `label_fields` those that tell its configurations apart (shown as `config`, e.g. `opt=all`)."""

    precision: Precision = "fp32"
    label_fields: ClassVar[tuple[str, ...]] = ()

    def label(self) -> str:
        """`opt=all,threads=2`: the label fields that are set (zero, None and empty values left out)."""
        values = ((name, getattr(self, name)) for name in self.label_fields)
        return ",".join(f"{name}={value}" for name, value in values if value not in (0, None, ""))


SessionT = TypeVar("SessionT", bound="Session")


class Session(ABC):
    """A loaded model, ready to run; a context manager that closes it (`with backend.open(...) as session:`)."""

    closed: bool = False

    def __enter__(self: SessionT) -> SessionT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the session's resources; closing twice is harmless."""
        if not self.closed:
            self.closed = True
            self._release()

    @abstractmethod
    def _release(self) -> None:
        """Free what the runtime holds (called once, by `close`)."""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return the outputs in graph order as host arrays."""

    @abstractmethod
    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Move feeds to where `run_timed` wants them (the device), once."""

    @abstractmethod
    def run_timed(self, prepared: Any) -> None:
        """Queue one run on feeds from `prepare`, leaving results where they are (for timing)."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on CPU)."""

    @abstractmethod
    def device_timer(self) -> Callable[[], float] | None:
        """A function returning the device time (s) of the last `run_timed`, or None to use wall time."""

    @abstractmethod
    def peak_memory_bytes(self) -> int | None:
        """Peak memory this session used where the runtime can tell, else None."""


OptionsT = TypeVar("OptionsT", bound=OpenOptions)


class Backend(Protocol[OptionsT]):
    """A runtime that opens models: ONNX files (`source="onnx"`) or PyTorch modules (`source="module"`)."""

    name: str
    description: str
    source: Source

    def availability(self) -> Availability:
        """Whether this backend can run here; never raises for a missing package or device."""
        ...

    def configs(self, options: RunOptions, inputs: BenchInputs) -> list[OptionsT]:
        """The configurations to time, each one the options `open` takes."""
        ...

    def open(self, model: Any, options: OptionsT) -> Session:
        """Load `model` (a path for `source="onnx"`, an `nn.Module` for `source="module"`); return a session."""
        ...


class HostSession(Session):
    """A session that runs on the host: feeds as they are, wall-clock timing, no memory figure."""

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
