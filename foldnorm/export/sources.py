"""Where a model comes from: an .onnx file, a built-in model name, or an import spec `pkg.mod:attr`."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldnorm.errors import InputSpecError
from foldnorm.export.exporter import Exporter, ExportResult, export_onnx
from foldnorm.onnxgraph.inputs import Shape

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ModelSource:
    """An unfolded ONNX file to work on, and the PyTorch module it came from when known."""

    label: str
    onnx_path: Path
    module: nn.Module | None = None
    input_shape: Shape | None = None
    export: ExportResult | None = None


def is_onnx_path(spec: str) -> bool:
    """Whether `spec` names an ONNX file rather than a built-in model or an import spec."""
    return spec.endswith(".onnx") or Path(spec).exists()


def load_module(spec: str) -> tuple[nn.Module, tuple[Shape, ...] | None, str]:
    """Build the module a built-in name or an import spec `package.module:attr` refers to.

    Returns `(module in eval mode, its default input shapes (one per input) or None, a label)`.
    """
    from torch import nn

    if ":" not in spec:
        from foldnorm.models import get_spec

        entry = get_spec(spec)
        return entry.build(), entry.input_shapes, entry.name
    mod_name, _, attr_name = spec.partition(":")
    if not mod_name or not attr_name:
        raise InputSpecError(f"import spec {spec!r} is not of the form package.module:attr")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InputSpecError(f"cannot import {mod_name!r} ({exc}); check the import spec and PYTHONPATH") from None
    obj: Any = module
    for part in attr_name.split("."):
        if not hasattr(obj, part):
            raise InputSpecError(f"{mod_name!r} has no attribute {attr_name!r}; check the import spec")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise InputSpecError(f"{spec} is neither an nn.Module nor a callable returning one")
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise InputSpecError(f"{spec} returned {type(obj).__name__}, not an nn.Module")
    return obj, None, spec


def resolve_source(
    spec: str,
    workdir: Path,
    *,
    input_shape: Shape | None = None,
    opset: int = 18,
    exporter: Exporter = "dynamo",
) -> ModelSource:
    """Turn a user's model argument into an unfolded ONNX file (exporting PyTorch models into `workdir`).

    An .onnx path is passed through unread: the caller's `load_model` checks it.
    """
    if is_onnx_path(spec):
        return ModelSource(spec, Path(spec))
    import torch

    module, default_shapes, label = load_module(spec)
    shape = input_shape or (default_shapes[0] if default_shapes else None)
    if shape is None:
        raise InputSpecError(f"{spec}: give the input shape with --input-shape, e.g. 1x3x224x224")
    path = workdir / f"{label.replace(':', '_').replace('/', '_')}.onnx"
    example = torch.randn(shape)
    result = export_onnx(module, [example], path, opset=opset, exporter=exporter)
    return ModelSource(label, path, module, shape, result)
