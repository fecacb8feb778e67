"""Stand-ins for TensorRT objects and for a session's CUDA calls, for the logic around them on machines where
TensorRT cannot be installed and no GPU exists. Buffers are real torch tensors on the CPU; the fake engine
computes `y = 2 * x` (and, for a data-dependent output, the positive elements of x)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from foldnorm.bench.backends.trt_session import Cuda, OutputBuffers


@dataclass(frozen=True)
class Named:
    """A TensorRT enum value (DataType, TensorIOMode): only its name is read."""

    name: str


@dataclass
class FakeEngine:
    """An engine with one input `x` and outputs `y` (x's shape) and, when `dynamic`, `pos` (data-dependent)."""

    dtype: str = "FLOAT"
    dynamic: bool = False
    accepts: Callable[[tuple[int, ...]], bool] = lambda shape: True
    cuda: CpuCuda | None = None
    num_io_tensors: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_io_tensors = 3 if self.dynamic else 2

    def get_tensor_name(self, index: int) -> str:
        return ["x", "y", "pos"][index]

    def get_tensor_mode(self, name: str) -> Named:
        return Named("INPUT" if name == "x" else "OUTPUT")

    def get_tensor_dtype(self, name: str) -> Named:
        return Named(self.dtype)

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """Reads and writes the tensors behind the addresses it was given (looked up in `CpuCuda.by_address`)."""

    def __init__(self, engine: FakeEngine) -> None:
        assert engine.cuda is not None
        self.engine, self.cuda = engine, engine.cuda
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.allocators: dict[str, Any] = {}
        self.enqueued = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = shape
        return self.engine.accepts(shape)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1,) if name == "pos" else self.shapes["x"]

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def set_output_allocator(self, name: str, allocator: Any) -> None:
        self.allocators[name] = allocator

    def execute_async_v3(self, stream: int) -> bool:
        self.enqueued += 1
        x = self.cuda.by_address[self.addresses["x"]]
        self.cuda.by_address[self.addresses["y"]].copy_(2 * x)
        if "pos" in self.allocators:
            pos = x[x > 0].flatten()
            allocator = self.allocators["pos"]
            address = allocator.reallocate_output_async("pos", 0, pos.numel() * pos.element_size(), 256, stream)
            allocator.notify_shape("pos", (pos.numel(),))
            self.cuda.by_address[address][:pos.numel() * pos.element_size()].copy_(pos.view(torch.uint8))
        return True


class FakeRuntime:
    """Deserializes any file to `engine` (None: a stale engine); the output allocator is the buffers themselves,
    with TensorRT's method names."""

    def __init__(self, engine: FakeEngine | None, cuda: CpuCuda) -> None:
        self.engine, self.cuda = engine, cuda

    def deserialize(self, data: bytes) -> FakeEngine | None:
        return self.engine

    def output_allocator(self, buffers: OutputBuffers) -> Any:
        class Allocator:
            def reallocate_output_async(self, name: str, memory: int, size: int, alignment: int, stream: int) -> int:
                return buffers.reallocate(name, size)

            def notify_shape(self, name: str, shape: tuple[int, ...]) -> None:
                buffers.notify_shape(name, shape)

        return Allocator()


class CpuCuda(Cuda):
    """The session's CUDA calls on the CPU: buffers are CPU tensors, registered by address; a "capture" records
    the enqueue and its replay calls it again; `foreign` lists what `foreign_bytes` returns, call by call (then 0)."""

    def __init__(self, foreign: list[int] | None = None) -> None:
        self.by_address: dict[int, torch.Tensor] = {}
        self.foreign = list(foreign or [])
        self.captured: list[Callable[[], None]] = []
        self.replays = 0
        self.events: list[int] = []

    def empty(self, shape: tuple[int, ...], dtype: Any) -> torch.Tensor:
        tensor = torch.zeros(shape, dtype=dtype)
        self.by_address[tensor.data_ptr()] = tensor
        return tensor

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        buffer.copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def stream_handle(self) -> int:
        return 7

    def synchronize(self) -> None:
        pass

    def record(self, which: int) -> None:
        self.events.append(which)

    def elapsed_s(self) -> float:
        return 0.001

    def capture(self, enqueue: Callable[[], None]) -> Callable[[], None]:
        self.captured.append(enqueue)

        def replay() -> None:
            self.replays += 1
            enqueue()

        return replay

    def foreign_bytes(self) -> int:
        return self.foreign.pop(0) if self.foreign else 0


def fake_session_parts(engine: FakeEngine | None, foreign: list[int] | None = None) -> tuple[FakeRuntime, CpuCuda]:
    """A runtime for `engine` and the CPU CUDA stand-in its contexts write through."""
    cuda = CpuCuda(foreign)
    if engine is not None:
        engine.cuda = cuda
    return FakeRuntime(engine, cuda), cuda
