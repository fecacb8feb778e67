"""Model inputs: shape specs from the command line, and seeded random feeds that fit a model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from foldnorm.errors import InputSpecError

Shape = tuple[int, ...]


def parse_shape(text: str) -> Shape:
    """Parse `1x3x224x224` into a tuple of positive ints."""
    parts = text.strip().lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputSpecError(f"shape {text!r} is not of the form 1x3x224x224 (positive integers joined by x)") \
            from None
    if not dims or any(d <= 0 for d in dims):
        raise InputSpecError(f"shape {text!r} has a dimension that is not positive; use e.g. 1x3x224x224")
    return dims


def parse_named_shape(text: str) -> tuple[str | None, Shape]:
    """Parse `NAME:1x3x224x224` (or a bare shape) into `(name or None, shape)`."""
    name, sep, rest = text.rpartition(":")
    if not sep:
        return None, parse_shape(text)
    if not name:
        raise InputSpecError(f"shape {text!r} has an empty input name; use NAME:1x3x224x224")
    return name, parse_shape(rest)


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, ONNX element type and dims (ints, or names for symbolic dims)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the input."""
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are left out)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append(InputSpec(vi.name, tt.elem_type, tuple(dims)))
    return specs


def concrete_shape(spec: InputSpec, batch_size: int, override: Shape | None = None) -> Shape:
    """The shape to feed: `override` if given, else the model's dims with a symbolic batch set to `batch_size`."""
    if override is not None:
        if len(override) != len(spec.dims):
            raise InputSpecError(
                f"input {spec.name!r} has rank {len(spec.dims)} but the given shape {override} has rank "
                f"{len(override)}; give all {len(spec.dims)} dims"
            )
        return override
    shape = []
    for axis, d in enumerate(spec.dims):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif axis == 0:
            shape.append(batch_size)
        else:
            dims_text = "x".join(str(x) if isinstance(x, int) and x > 0 else "N" for x in spec.dims)
            raise InputSpecError(
                f"input {spec.name!r} has a dynamic dimension {d!r} on axis {axis} ({dims_text}); "
                f"give its size with --shape {spec.name}:{dims_text.replace('N', '8')}"
            )
    return tuple(shape)


def random_array(shape: Shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Seeded data suited to the dtype: N(0, 1) floats, small non-negative integers, random booleans."""
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def make_feeds(
    model: onnx.ModelProto,
    batch_size: int = 1,
    seed: int = 0,
    shapes: Mapping[str, Shape] | None = None,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every model input, with the batch axis set to `batch_size` where dynamic."""
    shapes = dict(shapes or {})
    specs = input_specs(model)
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        names = ", ".join(s.name for s in specs)
        raise InputSpecError(f"the model has no input named {sorted(unknown)[0]!r}; its inputs are: {names}")
    rng = np.random.default_rng(seed)
    return {s.name: random_array(concrete_shape(s, batch_size, shapes.get(s.name)), s.dtype, rng)
            for s in specs}
