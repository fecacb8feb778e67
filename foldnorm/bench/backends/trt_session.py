"""A deserialized TensorRT engine with one execution context, run with `execute_async_v3` on torch CUDA buffers.

The session owns its input and output buffers (inputs filled by `prepare`), so addresses never change and the
enqueue can be captured once in a CUDA graph (`cuda_graph=True`, trtexec's `--useCudaGraph`) and replayed.
Outputs whose shape depends on the data (-1 after the input shapes are set) get buffers from an output
allocator that TensorRT asks at run time; such engines cannot be captured. Tensor types map to torch by name
(bf16 and fp8 included, which `trt.nptype` refuses). The memory figure is what this session itself holds,
measured while it opened (TensorRT's device allocations) plus its own buffers, so each variant of a
configuration reports its own even though both are open together.

The TensorRT calls outside the engine and context are in `TrtRuntime`, the CUDA calls in `Cuda`: tests on
machines without a GPU pass stand-ins for those two (TensorRT cannot be installed there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from foldnorm.bench.backends.base import Session
from foldnorm.errors import BackendUnavailableError

TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn"}


class StaleEngineError(BackendUnavailableError):
    """A cached engine file that this TensorRT no longer deserializes (another version, a damaged file)."""


def torch_dtype(trt_dtype: Any, tensor: str) -> Any:
    """The torch dtype of a TensorRT `DataType`, by its name; BackendUnavailableError for one torch lacks."""
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in TORCH_DTYPES:
        raise BackendUnavailableError(f"tensorrt unavailable: tensor {tensor!r} has TensorRT type {name}, "
                                      "which torch cannot hold")
    return getattr(torch, TORCH_DTYPES[name])


class OutputBuffers:
    """Buffers for outputs whose shape TensorRT knows only during a run: grown when TensorRT asks for more
    bytes, shaped when it tells the shape. `empty(nbytes)` makes a byte tensor on the device."""

    def __init__(self, empty: Callable[[int], Any]) -> None:
        self._empty = empty
        self.buffers: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def reallocate(self, name: str, size: int) -> int:
        """The address of a buffer of at least `size` bytes for `name` (kept when big enough)."""
        if name not in self.buffers or self.buffers[name].numel() < size:
            self.buffers[name] = self._empty(max(8, -(-size // 8) * 8))  # whole 8-byte words: any dtype views it
        return int(self.buffers[name].data_ptr())

    def notify_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Record the shape TensorRT computed for `name` in the last run."""
        self.shapes[name] = tuple(int(d) for d in shape)

    def output(self, name: str, dtype: Any) -> Any:
        """The last run's output `name`: the buffer's first elements in `dtype`, in the shape TensorRT told."""
        shape = self.shapes[name]
        return self.buffers[name].view(dtype)[:math.prod(shape)].view(shape)

    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return sum(int(b.numel()) for b in self.buffers.values())


class TrtRuntime:
    """The TensorRT calls a session makes besides those on its engine and context."""

    def __init__(self) -> None:
        import tensorrt as trt

        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

    def deserialize(self, data: bytes) -> Any:
        """The engine in `data`, or None when this TensorRT cannot load it."""
        return self._runtime.deserialize_cuda_engine(data)

    def output_allocator(self, buffers: OutputBuffers) -> Any:
        """A `trt.IOutputAllocator` that hands out `buffers`."""
        base = self._trt.IOutputAllocator

        class Allocator(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)

            def reallocate_output(self, name: str, memory: int, size: int, alignment: int) -> int:
                return buffers.reallocate(name, size)

            def reallocate_output_async(self, name: str, memory: int, size: int, alignment: int, stream: int) -> int:
                return buffers.reallocate(name, size)

            def notify_shape(self, name: str, shape: Any) -> None:
                buffers.notify_shape(name, tuple(shape))

        return Allocator()


class Cuda:
    """The CUDA work of one session, through torch: its stream, buffers, timing events, graph capture and the
    device memory that torch does not hold."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._stream = torch.cuda.Stream()
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A zeroed device tensor."""
        return self._torch.zeros(shape, dtype=dtype, device="cuda")

    def upload(self, buffer: Any, array: np.ndarray) -> None:
        """Copy a host array into a device buffer (converting the dtype) before the session's stream runs."""
        buffer.copy_(self._torch.from_numpy(np.ascontiguousarray(array)))
        self._torch.cuda.current_stream().synchronize()  # the copy ran on the default stream; runs use ours

    def stream_handle(self) -> int:
        """The session's stream, as TensorRT takes it."""
        return int(self._stream.cuda_stream)

    def synchronize(self) -> None:
        """Wait for the session's stream."""
        self._stream.synchronize()

    def record(self, which: int) -> None:
        """Record the start (0) or end (1) event on the session's stream."""
        self._events[which].record(self._stream)

    def elapsed_s(self) -> float:
        """Seconds between the last recorded start and end events."""
        return float(self._events[0].elapsed_time(self._events[1])) / 1e3

    def capture(self, enqueue: Callable[[], None]) -> Callable[[], None]:
        """Capture what `enqueue` queues on the session's stream in a CUDA graph; return its replay."""
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
            enqueue()

        def replay() -> None:
            with torch.cuda.stream(self._stream):
                graph.replay()

        return replay

    def foreign_bytes(self) -> int:
        """Device memory in use that torch's allocator does not hold (TensorRT's, other processes')."""
        free, total = self._torch.cuda.mem_get_info()
        return int(total - free - self._torch.cuda.memory_reserved())


class TrtSession(Session):
    """One engine and execution context on fixed buffers; `cuda_graph` replays a captured enqueue."""

    def __init__(self, engine_path: Path, shapes: Mapping[str, tuple[int, ...]], *, cuda_graph: bool = False,
                 runtime: TrtRuntime | None = None, cuda: Cuda | None = None) -> None:
        import torch

        self._cuda = cuda or Cuda()
        self._runtime = runtime or TrtRuntime()
        mark = self._cuda.foreign_bytes()
        self._engine = self._runtime.deserialize(engine_path.read_bytes())
        if self._engine is None:
            raise StaleEngineError(f"tensorrt unavailable: TensorRT cannot load the engine {engine_path}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.inputs = [n for n in names if self._engine.get_tensor_mode(n).name == "INPUT"]
        self.outputs = [n for n in names if n not in self.inputs]
        self._dtypes = {n: torch_dtype(self._engine.get_tensor_dtype(n), n) for n in names}
        self._buffers: dict[str, Any] = {}
        for name in self.inputs:
            shape = tuple(shapes[name])
            if not self._context.set_input_shape(name, shape):
                raise BackendUnavailableError(f"tensorrt unavailable: the engine refuses shape {shape} for input "
                                              f"{name!r} (outside its optimization profile)")
            self._bind(name, shape)
        self._dynamic = OutputBuffers(lambda nbytes: self._cuda.empty((nbytes,), torch.uint8))
        self._allocator = None
        for name in self.outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            if all(d >= 0 for d in shape):
                self._bind(name, shape)
                continue
            if cuda_graph:
                raise BackendUnavailableError(f"tensorrt unavailable: no CUDA graph for this engine: output {name!r} "
                                              "has a data-dependent shape")
            self._allocator = self._allocator or self._runtime.output_allocator(self._dynamic)
            self._context.set_output_allocator(name, self._allocator)
        self._launch = self._enqueue
        if cuda_graph:
            self._enqueue()  # TensorRT's first enqueue does deferred work that a capture must not contain
            self._cuda.synchronize()
            self._launch = self._cuda.capture(self._enqueue)
        self._held = self._cuda.foreign_bytes() - mark + sum(int(b.nbytes) for b in self._buffers.values())

    def _bind(self, name: str, shape: tuple[int, ...]) -> None:
        self._buffers[name] = self._cuda.empty(shape, self._dtypes[name])
        self._context.set_tensor_address(name, int(self._buffers[name].data_ptr()))

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._cuda.stream_handle()):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """Copy the feeds into the session's input buffers, in the engine's input dtypes."""
        for name in self.inputs:
            self._cuda.upload(self._buffers[name], feeds[name])
        return {name: self._buffers[name] for name in self.inputs}

    def run_timed(self, prepared: Any) -> None:
        """Queue one inference (or replay the captured graph) on the bound buffers, between two CUDA events."""
        self._cuda.record(0)
        self._launch()
        self._cuda.record(1)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once on `feeds` and copy every output back to the host (floating point as float32)."""
        self.run_timed(self.prepare(feeds))
        self.synchronize()
        outputs = [self._buffers[n] if n in self._buffers else self._dynamic.output(n, self._dtypes[n])
                   for n in self.outputs]
        return [(o.float() if o.is_floating_point() else o).cpu().numpy() for o in outputs]

    def synchronize(self) -> None:
        """Wait for the session's stream."""
        self._cuda.synchronize()

    def device_timer(self) -> Callable[[], float] | None:
        """CUDA-event time of the last run, in seconds."""
        return self._cuda.elapsed_s

    def peak_memory_bytes(self) -> int | None:
        """Device memory this session holds: what TensorRT allocated while it opened (engine, context, graph) plus
        its own input/output buffers."""
        return self._held + self._dynamic.nbytes()

    def _release(self) -> None:
        """Release the graph, context, engine and buffers."""
        del self._launch, self._context, self._engine, self._buffers, self._dynamic, self._allocator
