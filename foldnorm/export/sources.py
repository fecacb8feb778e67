"""Where a model comes from: an .onnx file or `onnx.ModelProto`, a built-in model name, an import spec
`pkg.mod:attr`, or an `nn.Module` with example inputs."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import onnx

from foldnorm.errors import InputSpecError
from foldnorm.export.exporter import Exporter, ExportResult, export_onnx
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import save_model

if TYPE_CHECKING:
    import torch
    from torch import nn

#: What a user may hand over as a model: a path, a built-in name or import spec, a ModelProto, an nn.Module.
ModelArg = Union[str, "os.PathLike[str]", onnx.ModelProto, "nn.Module"]

#: Input shapes given by the user: one per input in order, or by input name.
InputShapes = Sequence[Shape] | Mapping[str, Shape]


# File suffixes of PyTorch checkpoints and weight files, which hold no module to export.
_CHECKPOINTS = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pkl")


@dataclass
class ModelSource:
    """An unfolded ONNX file to work on, and the PyTorch module it came from (with the shapes of the example
    inputs it was exported with, in input order) when known."""

    label: str
    onnx_path: Path
    module: nn.Module | None = None
    input_shapes: tuple[Shape, ...] | None = None
    export: ExportResult | None = None


def is_onnx_path(spec: str) -> bool:
    """Whether `spec` names an ONNX file rather than a built-in model, an import spec or a PyTorch checkpoint."""
    return spec.endswith(".onnx") or (Path(spec).exists() and Path(spec).suffix.lower() not in _CHECKPOINTS)


def load_module(spec: str) -> tuple[nn.Module, tuple[Shape, ...] | None, str]:
    """Build the module a built-in name or an import spec `package.module:attr` refers to.

    Returns `(module in eval mode, its default input shapes (one per input) or None, a label)`.
    """
    from torch import nn

    if Path(spec).suffix.lower() in _CHECKPOINTS:
        raise InputSpecError(f"{spec} is a checkpoint (weights), not a module: torch cannot rebuild the network from "
                             "it alone; give the code that builds the module as package.module:attr (an nn.Module "
                             "or a callable returning one, which may load the checkpoint), e.g. "
                             "mypkg.nets:build_net --input-shape 1x3x224x224")
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
    spec: ModelArg,
    workdir: Path,
    *,
    example_inputs: Sequence[torch.Tensor] | None = None,
    input_shapes: InputShapes | None = None,
    opset: int = 18,
    exporter: Exporter = "dynamo",
) -> ModelSource:
    """Turn a user's model argument into an unfolded ONNX file (saving a ModelProto or exporting a PyTorch model
    into `workdir`).

    An .onnx path is passed through unread: the caller's `load_model` checks it. A PyTorch model is exported
    with `example_inputs`, else random tensors of `input_shapes` (named shapes name the exported inputs), else
    a built-in model's own shapes.
    """
    if isinstance(spec, onnx.ModelProto):
        return ModelSource("model", save_model(spec, workdir / "model.onnx"))
    if isinstance(spec, (str, os.PathLike)) and is_onnx_path(os.fspath(spec)):
        return ModelSource(os.fspath(spec), Path(spec))
    import torch

    if isinstance(spec, (str, os.PathLike)):
        module, default_shapes, label = load_module(os.fspath(spec))
    elif isinstance(spec, torch.nn.Module):
        module, default_shapes, label = spec, None, type(spec).__name__
    else:
        raise InputSpecError(f"cannot benchmark a {type(spec).__name__}; give an .onnx path, a ModelProto, a "
                             "built-in model name, an import spec package.module:attr or an nn.Module")
    names = list(input_shapes) if isinstance(input_shapes, Mapping) else None
    if example_inputs is None:
        shapes = list(input_shapes.values() if isinstance(input_shapes, Mapping) else input_shapes or ()) \
            or list(default_shapes or ())
        if not shapes:
            raise InputSpecError(f"{label}: give the input shape with --input-shape (example_inputs= or "
                                 "input_shapes= in Python), e.g. 1x3x224x224")
        gen = torch.Generator().manual_seed(0)
        example_inputs = [torch.randn(shape, generator=gen) for shape in shapes]
    path = workdir / f"{label.replace(':', '_').replace('/', '_')}.onnx"
    result = export_onnx(module, example_inputs, path, input_names=names, opset=opset, exporter=exporter)
    return ModelSource(label, path, module, tuple(tuple(t.shape) for t in example_inputs), result)
