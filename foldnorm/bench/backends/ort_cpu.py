"""ONNX Runtime on the CPU. `opt="disabled"` is the honest baseline: from `basic` up ORT folds Conv+BN itself.

Intra-op worker threads do not spin-wait here (`session.intra_op.allow_spinning=0`) unless `spin=True`:
two sessions timed in turn each keep a pool of spinning workers, and on a machine with few cores those
workers steal the CPU from the session being timed (see README, "Benchmark noise").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from foldnorm.bench.backends.base import (
    OPT_LEVELS,
    Availability,
    BenchInputs,
    HostSession,
    OpenOptions,
    OptLevel,
    RunOptions,
    Source,
)
from foldnorm.errors import FoldnormError, first_line

ORT_INSTALL_HINT = "pip install 'foldnorm[ort]'"


@dataclass(frozen=True, kw_only=True)
class OrtOptions(OpenOptions):
    """An ONNX Runtime CPU session: optimization level, intra-op threads (0: ORT's default), worker spinning."""

    opt: OptLevel = "disabled"
    threads: int = 0
    spin: bool = False
    label_fields: ClassVar[tuple[str, ...]] = ("opt", "threads")


def session_options(options: OrtOptions) -> Any:
    """`onnxruntime.SessionOptions` for an optimization level, a thread count (0: ORT's default) and spinning."""
    import onnxruntime as ort

    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if options.opt not in levels:
        raise FoldnormError(f"unknown ONNX Runtime optimization level {options.opt!r}; use one of {OPT_LEVELS}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[options.opt]
    so.log_severity_level = 4  # errors reach the caller as exceptions; ORT would also print them
    if options.threads:
        so.intra_op_num_threads = options.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
    return so


class OrtSession(HostSession):
    """An `onnxruntime.InferenceSession` behind the `Session` contract (CPU unless `providers` say otherwise);
    `config` adds session config entries; `initializers` are arrays ONNX Runtime uses in place of the model's
    initializers of those names, without a copy (they must not change while the session is open)."""

    def __init__(self, model: str | bytes, options: OrtOptions | None = None,
                 providers: Sequence[Any] = ("CPUExecutionProvider",), config: Mapping[str, str] | None = None,
                 initializers: Mapping[str, np.ndarray] | None = None) -> None:
        import onnxruntime as ort

        so = session_options(options or OrtOptions())
        for key, value in (config or {}).items():
            so.add_session_config_entry(key, value)
        self._shared = [(name, ort.OrtValue.ortvalue_from_numpy(array)) for name, array in (initializers or {}).items()]
        for name, value in self._shared:
            so.add_initializer(name, value)
        try:
            self._session = ort.InferenceSession(model, so, providers=list(providers))
        except Exception as exc:  # ORT raises its own untyped exceptions for invalid models
            where = model if isinstance(model, str) else "model"
            raise FoldnormError(
                f"{where}: ONNX Runtime cannot load it ({first_line(exc)}); check the file with onnx.checker"
            ) from exc
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.providers: list[str] = list(self._session.get_providers())

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once and return every output."""
        return [np.asarray(o) for o in self._session.run(None, dict(feeds))]

    def run_timed(self, prepared: Any) -> None:
        """Run once, discarding outputs."""
        self._session.run(None, prepared)

    def _release(self) -> None:
        """Drop the ORT session, then the initializers it used."""
        del self._session
        self._shared.clear()


class OrtCpuBackend:
    """ONNX Runtime, CPU execution provider."""

    name = "ort-cpu"
    description = "ONNX Runtime, CPU execution provider"
    source: Source = "onnx"

    def availability(self) -> Availability:
        """Available when the `onnxruntime` package is importable."""
        if importlib.util.find_spec("onnxruntime") is None:
            return Availability(False, "onnxruntime is not installed", ORT_INSTALL_HINT)
        return Availability(True)

    def configs(self, options: RunOptions, inputs: BenchInputs) -> list[OrtOptions]:
        """One configuration per requested optimization level."""
        return [OrtOptions(opt=o, threads=options.threads) for o in options.ort_opt]

    def open(self, model: Any, options: OrtOptions) -> OrtSession:
        """Open the file `model` with `options`."""
        self.availability().require(self.name)
        return OrtSession(str(model), options)
