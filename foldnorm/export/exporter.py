"""Faithful, unfolded ONNX export of PyTorch modules.

`torch.onnx.export`'s defaults fold BatchNorm silently (the dynamo exporter's `optimize=True`, the legacy
exporter's eval-mode constant folding). Here BN stays: dynamo runs with `optimize=False`, legacy with
`training=PRESERVE` and no constant folding. The raw graph is then tidied without folding anything
(`export_cleanup`), and checked against `module.eval()(x)` on ONNX Runtime (optimizations disabled) at two
batch sizes.

The dynamo exporter ignores `training=` and exports a train-mode BN as inference BN without a word, so a
module left in train mode is refused unless the caller accepts that BN uses its running statistics.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import onnx

from foldnorm.errors import ExportError, FoldnormError, InputSpecError, first_line
from foldnorm.export.cleanup import clean_export
from foldnorm.export.diagnose import SPECIALISED, fp16_note, root_cause, specialises_batch, static_batch
from foldnorm.fold.normalizations import survey
from foldnorm.onnxgraph.inputs import input_specs
from foldnorm.onnxgraph.modelio import check_output_path, needs_external_data, save_model
from foldnorm.verify.measure import measure_error

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Exporter = Literal["dynamo", "legacy"]
ExportDtype = Literal["float32", "float16", "bfloat16"]

# Loggers that print warnings and guard errors we cannot act on during an export (torch's own, its exporters').
_NOISY_LOGGERS = ("torch", "onnxscript", "onnx_ir")


@dataclass
class BatchCheck:
    """ONNX Runtime against PyTorch at one batch size (worst over all outputs)."""

    batch_size: int
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class ExportResult:
    """An exported model file, what it contains, and how it compares with the PyTorch module."""

    path: str
    exporter: str
    opset: int
    batchnorm: int
    protected: dict[str, int]
    check_batch_sizes: list[int] = field(default_factory=list)
    max_abs: float = 0.0
    max_rel: float = 0.0
    ok: bool = True
    dtype: str = "float32"
    inputs: dict[str, list[int]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    dynamic_batch: bool = True
    external_data: bool = False
    train_mode: bool = False
    cleanup: dict[str, int] = field(default_factory=dict)
    checks: list[BatchCheck] = field(default_factory=list)
    check_note: str | None = None
    requested_opset: int | None = None
    #: what the export did differently from what was asked, and why (e.g. a static batch torch forced)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        return asdict(self)

    def summary(self) -> str:
        """One line about the export."""
        prot = ", ".join(f"{v} {k}" for k, v in self.protected.items() if v) or "no GN/LN/IN"
        if self.check_note and not self.checks:
            check = f"not checked: {self.check_note}"
        elif self.check_note:
            check = (f"ORT vs torch max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} (batch sizes "
                     f"{self.check_batch_sizes}): {'ok' if self.ok else 'MISMATCH'}: {self.check_note}")
        else:
            check = (f"ORT vs torch max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} "
                     f"(batch sizes {self.check_batch_sizes}): {'ok' if self.ok else 'MISMATCH'}")
        return (f"wrote {self.path} ({self.exporter}, opset {self.opset}, {self.dtype}): "
                f"{self.batchnorm} BatchNorm, {prot}; {check}")


@contextlib.contextmanager
def _stdout_fd_to_devnull() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null: the legacy exporter's C++ log writes TorchScript graphs there."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's warnings, log lines (its guard errors too) and graph dumps on stdout for the duration.

    With logging at INFO or below (`foldnorm -v`) torch's errors are let through.
    """
    names = [name for name in logging.root.manager.loggerDict
             if name.split(".")[0] in _NOISY_LOGGERS] + list(_NOISY_LOGGERS)
    loggers = [logging.getLogger(name) for name in dict.fromkeys(names)]
    levels = [lg.level for lg in loggers]
    quiet = logging.ERROR if logging.getLogger().getEffectiveLevel() <= logging.INFO else logging.CRITICAL + 1
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _stdout_fd_to_devnull():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(quiet)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    opset: int = 18,
    exporter: Exporter = "dynamo",
    dynamic_batch: bool = True,
    train_ok: bool = False,
    check_batch_sizes: Sequence[int] = (1, 2),
    dtype: ExportDtype | None = None,
    external_data: bool | None = None,
    require_dynamic_batch: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> ExportResult:
    """Export `module` to `path` as ONNX with every BatchNorm still present, then check it against torch.

    `dtype` ("float32", "float16", "bfloat16") converts a copy of the module and the floating inputs
    first (the caller's module is left as it is). Axis 0 of every input is a dynamic batch axis unless
    `dynamic_batch=False`. `external_data` stores weights in `<path>.data` (None: only above protobuf's
    limit). A module in train mode is refused unless `train_ok` (BN then uses its running statistics).
    ONNX Runtime cannot run bfloat16 Conv/Gemm/MatMul on the CPU: such exports are written but not checked
    (`check_note` says so). When torch cannot keep the batch dynamic (the module specialises it), the model is
    exported with the example's static batch and `notes` says so, unless `require_dynamic_batch` (then
    `ExportError`). `rtol`/`atol` override the check's per-dtype tolerances.
    """
    import torch

    out = check_output_path(path)
    if exporter not in get_args(Exporter):
        raise InputSpecError(f"unknown exporter {exporter!r}; use {' or '.join(map(repr, get_args(Exporter)))}")
    if dtype is not None and dtype not in get_args(ExportDtype):
        raise InputSpecError(f"unsupported dtype {dtype!r}; use one of {', '.join(get_args(ExportDtype))}")
    was_training = module.training
    if was_training and not train_ok:
        raise ExportError("the module is in train mode; call module.eval() first "
                          "(or pass train_ok / --train-ok to export it with BN using running statistics)")
    args = tuple(example_inputs)
    if not args:
        raise InputSpecError("example_inputs: empty; give at least one example input tensor")
    names = _input_names(input_names, len(args))
    if dynamic_batch and len({a.shape[0] if a.dim() else None for a in args}) != 1:
        raise InputSpecError("the example inputs differ in their first dimension, so they share no batch axis; "
                             "export with a static batch (--static / dynamic_batch=False)")
    target = getattr(torch, dtype) if dtype else None
    tensors = [*module.parameters(), *module.buffers()]
    convert = target is not None and any(t.is_floating_point() and t.dtype != target for t in tensors)
    work = copy.deepcopy(module).to(target) if convert else module
    args = tuple(_cast(a, target) for a in args)
    work.eval()
    try:
        return _export_eval_module(work, args, names, out, opset=opset, exporter=exporter,
                                   batch=_BatchPolicy(dynamic_batch, require_dynamic_batch),
                                   external_data=external_data, check=_Check(check_batch_sizes, rtol, atol),
                                   train_mode=was_training, label=module)
    finally:
        if was_training:
            module.train()


@dataclass(frozen=True)
class _BatchPolicy:
    """A dynamic batch axis wanted, and whether a static one (when torch cannot keep it dynamic) is an error."""

    dynamic: bool
    required: bool


@dataclass(frozen=True)
class _Check:
    """The check against torch: batch sizes (the example's alone for a static batch) and tolerance overrides."""

    batch_sizes: Sequence[int]
    rtol: float | None
    atol: float | None


def _export_batch(work: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output_names: list[str],
                  opset: int, exporter: Exporter, batch: _BatchPolicy) -> tuple[onnx.ModelProto, bool, list[str]]:
    """Run the exporter; a batch torch cannot keep dynamic becomes static (with a note) unless it is required.

    Returns the model, whether its batch axis is dynamic, and the notes.
    """
    example = int(args[0].shape[0]) if args[0].dim() else 1
    demand = "; pass --static to accept a static batch, or change the module"
    try:
        model = _run_exporter(work, args, names, output_names, opset, exporter, batch.dynamic)
    except ExportError as exc:
        if not (batch.dynamic and exc.__cause__ is not None and specialises_batch(exc.__cause__)):
            raise
        if batch.required:
            raise ExportError(f"torch cannot export {type(work).__name__} with a dynamic batch: {SPECIALISED} "
                              f"(torch: ConstraintViolationError){demand}") from exc
        model = _run_exporter(work, args, names, output_names, opset, exporter, False)
        return model, False, [f"{SPECIALISED} (torch: ConstraintViolationError), so the batch is static "
                              f"({example}); pass --dynamic-batch to make that an error"]
    fixed = static_batch(model, names) if batch.dynamic else None
    if fixed is None:
        return model, batch.dynamic, []
    if batch.required:
        raise ExportError(f"torch made the batch of {type(work).__name__} static ({fixed}): {SPECIALISED}{demand}")
    return model, False, [f"torch made the batch static ({fixed}): {SPECIALISED}; the file takes batch {fixed} "
                          "only (pass --dynamic-batch to make that an error)"]


def _export_eval_module(work: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], out: Path, *,
                        opset: int, exporter: Exporter, batch: _BatchPolicy, external_data: bool | None,
                        check: _Check, train_mode: bool, label: torch.nn.Module) -> ExportResult:
    """Export the eval-mode `work`, clean, record settings, save and check (`label`: the caller's module)."""
    import torch

    try:
        with torch.no_grad():
            outputs = _leaves(work(*args))
    except Exception as exc:  # the module rejects the example inputs: shapes (or dtypes) that do not fit it
        shapes = ", ".join("x".join(map(str, a.shape)) for a in args)
        raise InputSpecError(f"{type(label).__name__} fails on example inputs of shape {shapes} "
                             f"({_first_line(exc)}); give shapes it accepts (--input-shape)") from exc
    output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    model, dynamic_batch, notes = _export_batch(work, args, names, output_names, opset, exporter, batch)
    cleanup = clean_export(model)
    requested, opset = opset, _default_opset(model, opset)
    if opset != requested:
        log.info("torch wrote opset %d although opset %d was requested", opset, requested)
    settings = {
        "foldnorm.exporter": exporter, "foldnorm.opset": str(opset), "foldnorm.torch_version": torch.__version__,
        "foldnorm.module": f"{type(label).__module__}.{type(label).__qualname__}",
        "foldnorm.dtype": str(args[0].dtype).removeprefix("torch."),
        "foldnorm.dynamic_batch": str(dynamic_batch).lower(),
        "foldnorm.inputs": ";".join(f"{n}:{'x'.join(map(str, a.shape))}" for n, a in zip(names, args)),
        "foldnorm.train_mode": str(train_mode).lower(),
    }
    for key, value in settings.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    saved_external = bool(external_data) or (external_data is None and needs_external_data(model))
    save_model(model, out, external_data=saved_external)
    norms = survey(model)
    result = ExportResult(
        str(out), exporter, opset, norms.batchnorm, norms.by_op(), dtype=settings["foldnorm.dtype"],
        inputs={n: list(a.shape) for n, a in zip(names, args)}, outputs=[o.name for o in model.graph.output],
        dynamic_batch=dynamic_batch, external_data=saved_external, train_mode=train_mode,
        cleanup=cleanup.to_dict(), requested_opset=requested, notes=notes,
    )
    if check.batch_sizes:
        batches = list(check.batch_sizes) if dynamic_batch else [int(args[0].shape[0])]
        with torch.no_grad():
            _check_against_torch(work, args, out, model, result, _Check(batches, check.rtol, check.atol))
            if not result.ok and result.checks and result.dtype == "float16":
                _explain_fp16(label, work, args, result)
    return result


def _default_opset(model: onnx.ModelProto, fallback: int) -> int:
    """The opset of the default ONNX domain the exporter actually wrote."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), fallback)


def _input_names(given: Sequence[str] | None, count: int) -> list[str]:
    if not given:
        return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]
    names = list(given)
    if len(names) != count or len(set(names)) != count:
        raise InputSpecError(f"give {count} distinct input names, one per example input (got {names})")
    return names


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _leaves(value: Any) -> list[torch.Tensor]:
    """The tensors of a module's output (a tensor, or nested tuples/lists/dicts of them), in export order."""
    import torch
    from torch.utils import _pytree

    return [leaf for leaf in _pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _first_line(exc: BaseException) -> str:
    """`errors.first_line`, less torch's " [Caused by ...]" tail, at most 300 characters."""
    return first_line(exc).split(" [Caused by")[0].strip()[:300]


def _run_exporter(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
                  output_names: list[str], opset: int, exporter: Exporter, dynamic_batch: bool) -> onnx.ModelProto:
    try:
        with quiet_torch():
            if exporter == "dynamo":
                return _export_dynamo(module, args, names, output_names, opset, dynamic_batch)
            return _export_legacy(module, args, names, output_names, opset, dynamic_batch)
    except FoldnormError:
        raise
    except Exception as exc:  # torch raises many exception types for unexportable modules
        other = "legacy" if exporter == "dynamo" else "dynamo"
        hint = f"try --exporter {other}" + ("" if not dynamic_batch else " or --static")
        raise ExportError(f"torch could not export {type(module).__name__} with the {exporter} exporter "
                          f"({root_cause(exc)}); {hint}") from exc


def _export_dynamo(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
                   output_names: list[str], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    import torch

    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if a.dim() else None for a in args)
    program = torch.onnx.export(module, args, dynamo=True, optimize=False, opset_version=opset,
                                input_names=names, output_names=output_names, dynamic_shapes=dynamic_shapes,
                                verbose=False, external_data=False)
    if program is None:
        raise ExportError("torch.onnx.export returned no program; upgrade torch to 2.6 or newer")
    return program.model_proto


def _export_legacy(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
                   output_names: list[str], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    import torch

    axes = {n: {0: "batch"} for n in [*names, *output_names]} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="foldnorm-legacy-") as tmp:  # torch.onnx.export writes to a path
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module, args, path,
            dynamo=False, opset_version=opset, input_names=names, output_names=output_names, dynamic_axes=axes,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        )
        return onnx.load(path)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.float().numpy().astype(ml_dtypes.bfloat16)
    return tensor.detach().numpy()


def _random_like(example: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    shape = (batch, *example.shape[1:]) if example.dim() else ()
    if example.is_floating_point():
        return torch.randn(shape, generator=gen).to(example.dtype)
    if example.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    high = max(int(example.max()) + 1, 1) if example.numel() else 1
    return torch.randint(0, high, shape, generator=gen).to(example.dtype)


def _check_against_torch(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                         model: onnx.ModelProto, result: ExportResult, spec: _Check) -> None:
    """Run the saved file on ORT (optimizations disabled) and `module` on the same inputs; fill `result`."""
    import torch

    from foldnorm.bench.backends.ort_cpu import OrtSession

    try:
        session = OrtSession(str(path))
    except FoldnormError as exc:
        _check_failed(result, args, str(exc))
        return
    feed_names = [spec.name for spec in input_specs(model)]
    gen = torch.Generator().manual_seed(0)
    with session:
        for batch in spec.batch_sizes:
            inputs = tuple(_random_like(a, batch, gen) for a in args)
            expected = _leaves(module(*inputs))
            try:
                got = session.run({n: _to_numpy(t) for n, t in zip(feed_names, inputs)})
            except Exception as exc:  # ORT raises untyped errors for kernels it lacks
                _check_failed(result, args, f"ONNX Runtime failed to run it ({_first_line(exc)})")
                return
            check = BatchCheck(batch, 0.0, 0.0, len(got) == len(expected))
            for ref, cand in zip(expected, got):
                ref_np = ref.float().numpy() if ref.dtype == torch.bfloat16 else ref.numpy()
                max_abs, max_rel, bad, _ = measure_error(ref_np, np.asarray(cand, dtype=ref_np.dtype), spec.rtol,
                                                         spec.atol)
                check.max_abs, check.max_rel = max(check.max_abs, max_abs), max(check.max_rel, max_rel)
                check.ok = check.ok and bad == 0
            result.checks.append(check)
            log.info("export check at batch %d: max abs %.3g, max rel %.3g", batch, check.max_abs, check.max_rel)
    result.check_batch_sizes = list(spec.batch_sizes)
    result.max_abs = max(c.max_abs for c in result.checks)
    result.max_rel = max(c.max_rel for c in result.checks)
    result.ok = all(c.ok for c in result.checks)


def _explain_fp16(original: torch.nn.Module, work: torch.nn.Module, args: tuple[torch.Tensor, ...],
                  result: ExportResult) -> None:
    """A float16 export that missed its tolerance: when the float16 module is as far from its float32 original as
    ONNX Runtime is from it, the error is float16's own; `check_note` says so."""
    import torch

    if original is work or not all(p.dtype == torch.float32 for p in original.parameters()):
        return
    with torch.no_grad():
        half = _leaves(work(*args))
        full = _leaves(original(*[a.float() if a.is_floating_point() else a for a in args]))
    intrinsic = max((measure_error(f.numpy(), h.float().numpy())[1] for f, h in zip(full, half)), default=0.0)
    if result.max_rel <= 4 * intrinsic:
        result.check_note = fp16_note(result.max_rel, intrinsic)


def _check_failed(result: ExportResult, args: tuple[torch.Tensor, ...], reason: str) -> None:
    """ORT could not run the export: a bfloat16 model is left unchecked, anything else is a failed check."""
    import torch

    if any(a.dtype == torch.bfloat16 for a in args):
        result.check_note = ("ONNX Runtime's CPU kernels do not support bfloat16, so the export was not "
                             "compared with torch; check it on the target backend")
        return
    result.ok = False
    result.check_note = reason
