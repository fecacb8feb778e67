"""Faithful, unfolded ONNX export of PyTorch modules.

`torch.onnx.export`'s defaults fold BatchNorm silently (the dynamo exporter's `optimize=True`, the legacy
exporter's eval-mode constant folding). Here BN stays: dynamo runs with `optimize=False`, legacy with
`training=PRESERVE`. The export is then checked against `module.eval()(x)` on ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import onnx

from foldnorm.compare import measure_error, tolerances_for
from foldnorm.errors import ExportError
from foldnorm.inputs import Shape
from foldnorm.modelio import check_output_path, save_model
from foldnorm.normalizations import LAYERNORM_OPS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Exporter = Literal["dynamo", "legacy"]


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

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line about the export."""
        prot = ", ".join(f"{v} {k}" for k, v in self.protected.items() if v) or "no GN/LN/IN"
        check = (f"ORT vs torch max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} "
                 f"(batch sizes {self.check_batch_sizes}): {'ok' if self.ok else 'MISMATCH'}")
        return f"wrote {self.path} ({self.exporter}, opset {self.opset}): {self.batchnorm} BatchNorm, {prot}; {check}"


def count_norms(model: onnx.ModelProto) -> tuple[int, dict[str, int]]:
    """BatchNormalization count and GroupNorm/LayerNorm/InstanceNorm counts of a model's main graph."""
    ops = [n.op_type for n in model.graph.node]
    return ops.count("BatchNormalization"), {
        "GroupNormalization": ops.count("GroupNormalization"),
        "LayerNormalization": sum(ops.count(o) for o in LAYERNORM_OPS),
        "InstanceNormalization": ops.count("InstanceNormalization"),
    }


def _with_batch(shape: Shape, batch: int) -> Shape:
    return (batch, *shape[1:])


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
) -> ExportResult:
    """Export `module` to `path` as ONNX with every BatchNorm still present, then check it against torch.

    A module in train mode is refused unless `train_ok` (BN then uses its running statistics).
    """
    import torch

    out = check_output_path(path)
    if module.training and not train_ok:
        raise ExportError("the module is in train mode; call module.eval() first "
                          "(or pass train_ok / --train-ok to export it with BN using running statistics)")
    module.eval()
    args = tuple(example_inputs)
    names = list(input_names) if input_names else (["input"] if len(args) == 1 else
                                                   [f"input_{i}" for i in range(len(args))])
    try:
        model = _export_dynamo(module, args, names, opset, dynamic_batch) if exporter == "dynamo" else \
            _export_legacy(module, args, names, opset, dynamic_batch)
    except ExportError:
        raise
    except Exception as exc:  # torch raises many exception types for unexportable modules
        raise ExportError(f"torch could not export {type(module).__name__} ({str(exc).splitlines()[0]}); "
                          "try --exporter legacy or another --opset") from exc
    for key, value in (("foldnorm.exporter", exporter), ("foldnorm.opset", str(opset)),
                       ("foldnorm.torch_version", torch.__version__),
                       ("foldnorm.module", f"{type(module).__module__}.{type(module).__qualname__}")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    save_model(model, out)
    bn, protected = count_norms(model)
    result = ExportResult(str(out), exporter, opset, bn, protected)
    if check_batch_sizes:
        _check_against_torch(module, args, names, model, result,
                             check_batch_sizes if dynamic_batch else [args[0].shape[0]])
    return result


def _export_dynamo(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], opset: int,
                   dynamic_batch: bool) -> onnx.ModelProto:
    import torch

    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in args)
    program = torch.onnx.export(module, args, dynamo=True, optimize=False, opset_version=opset,
                                input_names=names, dynamic_shapes=dynamic_shapes, verbose=False)
    if program is None:
        raise ExportError("torch.onnx.export returned no program; upgrade torch to 2.6 or newer")
    return program.model_proto


def _export_legacy(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str], opset: int,
                   dynamic_batch: bool) -> onnx.ModelProto:
    import io

    import torch

    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    torch.onnx.export(
        module, args, buffer,  # type: ignore[arg-type]
        dynamo=False, opset_version=opset, input_names=names, dynamic_axes=axes,
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def _check_against_torch(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
                         model: onnx.ModelProto, result: ExportResult, batch_sizes: Sequence[int]) -> None:
    import torch

    from foldnorm.backends.ort_cpu import OrtSession

    session = OrtSession(model.SerializeToString())
    gen = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        inputs = tuple(torch.randn(_with_batch(tuple(a.shape), batch), generator=gen).to(a.dtype) for a in args)
        with torch.no_grad():
            expected = module(*inputs)
        flat = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        got = session.run({n: t.numpy() for n, t in zip(names, inputs)})
        for ref, cand in zip(flat, got):
            ref_np = ref.detach().numpy()
            rtol, atol = tolerances_for(ref_np.dtype, None, None)
            max_abs, max_rel, bad, _ = measure_error(ref_np, cand, rtol * 10, atol * 10)
            result.max_abs = max(result.max_abs, max_abs)
            result.max_rel = max(result.max_rel, max_rel)
            result.ok = result.ok and bad == 0
    result.check_batch_sizes = list(batch_sizes)
    log.info("export check: max abs %.3g, max rel %.3g", result.max_abs, result.max_rel)
