"""PyTorch eager: the user's module itself, next to the copy folded by `foldnorm.fold_module`.

Only for benches that start from a PyTorch model (a built-in name or an import spec). CPU always; CUDA
(fp32 and fp16, timed with CUDA events) where torch sees a GPU.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from foldnorm.bench.backends.base import Availability, BenchInputs, OpenOptions, RunOptions, Session, Source
from foldnorm.bench.backends.memory import PeakMeter

if TYPE_CHECKING:
    from torch import nn

TORCH_INSTALL_HINT = "pip install 'foldnorm[torch]' (CPU machines: with -c constraints-cpu.txt)"


@dataclass(frozen=True, kw_only=True)
class TorchOptions(OpenOptions):
    """A PyTorch module on a device, with the CPU's intra-op threads (0: torch's default)."""

    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = 0
    label_fields: ClassVar[tuple[str, ...]] = ("device", "threads")


class TorchSession(Session):
    """A module on one device and dtype, run under `torch.inference_mode`."""

    def __init__(self, module: nn.Module, options: TorchOptions) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(options.device)
        self.dtype = torch.float16 if options.precision == "fp16" else torch.float32
        if options.threads and self.device.type == "cpu":
            torch.set_num_threads(options.threads)
        self._meter: PeakMeter | None = None
        self._events: tuple[Any, Any] | None = None
        if self.device.type == "cuda":
            self._meter = PeakMeter(partial(torch.cuda.memory_allocated, self.device),
                                    partial(torch.cuda.reset_peak_memory_stats, self.device),
                                    partial(torch.cuda.max_memory_allocated, self.device))
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

        def load() -> nn.Module:
            return copy.deepcopy(module).eval().to(self.device, self.dtype)

        self.module = self._meter.keeping(load) if self._meter else load()

    def _tensors(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        torch = self._torch
        out = []
        for array in feeds.values():
            t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
            out.append(t.to(self.dtype) if t.is_floating_point() else t)
        return out

    def _forward(self, feeds: Mapping[str, np.ndarray]) -> Any:
        with self._torch.inference_mode():
            return self.module(*self._tensors(feeds))

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; outputs back on the host as float32 (fp16 runs included) for comparison. On CUDA the run's
        memory is measured (see `peak_memory_bytes`)."""
        forward = partial(self._forward, feeds)
        result = self._meter.running(forward) if self._meter else forward()
        outputs = result if isinstance(result, (tuple, list)) else [result]
        return [o.detach().float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy() for o in outputs]

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Any:
        """The feeds as tensors on the session's device, made once."""
        return self._tensors(feeds)

    def run_timed(self, prepared: Any) -> None:
        """Queue one forward pass (between CUDA events on a GPU)."""
        with self._torch.inference_mode():
            if self._events is not None:
                self._events[0].record()
                self.module(*prepared)
                self._events[1].record()
            else:
                self.module(*prepared)

    def synchronize(self) -> None:
        """Wait for the GPU (no-op on the CPU)."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)

    def device_timer(self) -> Callable[[], float] | None:
        """CUDA-event time of the last run on a GPU; None (wall time) on the CPU."""
        if self._events is None:
            return None
        start, end = self._events
        return lambda: float(start.elapsed_time(end)) / 1e3

    def peak_memory_bytes(self) -> int | None:
        """CUDA memory of this session alone: its module's weights plus the highest rise of a `run` (None on the
        CPU). The other variant, open at the same time, is not counted."""
        return None if self._meter is None else self._meter.bytes()

    def _release(self) -> None:
        """Drop the module."""
        del self.module


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class TorchBackend:
    """PyTorch eager on the CPU (and CUDA where available), unfolded module vs `fold_module` copy."""

    name = "torch"
    description = "PyTorch eager: the module vs foldnorm.fold_module(module); CPU, and CUDA where available"
    source: Source = "module"

    def availability(self) -> Availability:
        """Available when torch is importable (the bench also needs a PyTorch model, not an .onnx file)."""
        if importlib.util.find_spec("torch") is None:
            return Availability(False, "torch is not installed", TORCH_INSTALL_HINT)
        return Availability(True)

    def configs(self, options: RunOptions, inputs: BenchInputs) -> list[TorchOptions]:
        """fp32 on the CPU; on CUDA every requested precision."""
        configs = [TorchOptions(device="cpu", threads=options.threads)]
        if cuda_available():
            configs += [TorchOptions(device="cuda", precision=p) for p in options.precisions]
        return configs

    def open(self, model: Any, options: TorchOptions) -> TorchSession:
        """Wrap the module `model` on `options.device` in `options.precision`."""
        self.availability().require(self.name)
        return TorchSession(model, options)
