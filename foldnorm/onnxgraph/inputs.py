"""Model inputs: shape specs from the command line, and seeded random feeds that fit a model."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def _spec(vi: onnx.ValueInfoProto) -> InputSpec:
    tt = vi.type.tensor_type
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return InputSpec(vi.name, tt.elem_type, tuple(dims))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are left out)."""
    inits = {t.name for t in model.graph.initializer}
    return [_spec(vi) for vi in model.graph.input if vi.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's outputs, described like its inputs."""
    return [_spec(vi) for vi in model.graph.output]


def concrete_shape(spec: InputSpec, batch_size: int, override: Shape | None = None) -> Shape:
    """The shape to feed: the model's dims, or `override` for them; a symbolic axis 0 is set to `batch_size`.

    The batch sizes apply to a symbolic batch axis even when a shape is given, so `--shape x:1x3x64x64` with
    batch sizes 1 and 4 feeds 1x3x64x64 and 4x3x64x64.
    """
    if override is not None:
        if len(override) != len(spec.dims):
            raise InputSpecError(
                f"input {spec.name!r} has rank {len(spec.dims)} but the given shape {override} has rank "
                f"{len(override)}; give all {len(spec.dims)} dims"
            )
        for axis, (given, d) in enumerate(zip(override, spec.dims)):
            if isinstance(d, int) and d > 0 and given != d:
                raise InputSpecError(
                    f"input {spec.name!r} has size {d} on axis {axis} but the given shape {override} has "
                    f"{given}; only dynamic dims can be set"
                )
        if spec.dims and not (isinstance(spec.dims[0], int) and spec.dims[0] > 0):
            return (batch_size, *override[1:])
        return override
    shape = []
    for axis, d in enumerate(spec.dims):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif axis == 0:
            shape.append(batch_size)
        else:
            fixed = [x if isinstance(x, int) and x > 0 else None for x in spec.dims]
            dims_text = "x".join(str(x) if x else str(spec.dims[i] or "?") for i, x in enumerate(fixed))
            example = "x".join(str(x) if x else ("1" if i == 0 else "8") for i, x in enumerate(fixed))
            raise InputSpecError(
                f"input {spec.name!r} has a dynamic dimension {d!r} on axis {axis} ({dims_text}); "
                f"give its size with --shape {spec.name}:{example}"
            )
    return tuple(shape)


def random_array(shape: Shape, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Seeded data suited to the dtype: N(0, 1) floats, small non-negative integers, random booleans.

    Small non-negative integers are valid indices, token ids and sizes for most graphs; floats are drawn in
    float64 and rounded once, so fp16/bf16 inputs see the same values an fp32 model would (rounded).
    """
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype.kind == "V" or "float" in dtype.name:
        return rng.standard_normal(size=shape).astype(dtype)
    raise InputSpecError(f"cannot make random inputs of type {dtype.name}; give real inputs with --inputs FILE.npz")


def feed_bytes(model: onnx.ModelProto, batch_size: int = 1, shapes: Mapping[str, Shape] | None = None) -> int:
    """The bytes `make_feeds` allocates for these arguments, from the shapes alone (values are drawn as 8-byte
    numbers first, so each element counts 8 bytes however narrow its type)."""
    shapes = dict(shapes or {})
    return sum(8 * math.prod(concrete_shape(s, batch_size, shapes.get(s.name))) for s in input_specs(model))


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


def load_feeds(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Real inputs from an `.npz` file holding one array per model input (named like the input).

    Arrays are cast to the input's dtype when that cast keeps their kind (float64 -> float32); their rank
    and static dims must match the model.
    """
    where = Path(path)
    if not where.is_file():
        raise InputSpecError(f"{where}: no such file; give an .npz written by numpy.savez with one array per input")
    try:
        with np.load(where, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputSpecError(f"{where}: not a readable .npz file ({exc}); write it with numpy.savez(path, "
                             "name=array, ...)") from None
    specs = input_specs(model)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise InputSpecError(f"{where}: arrays {sorted(arrays)} do not match the model inputs {names} "
                             f"(missing {missing}, unknown {extra}); name one array per input")
    feeds = {}
    for spec in specs:
        array = arrays[spec.name]
        if array.dtype != spec.dtype:
            if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
                raise InputSpecError(f"{where}: array {spec.name!r} is {array.dtype.name}, the model wants "
                                     f"{spec.dtype.name}; save it as {spec.dtype.name}")
            array = array.astype(spec.dtype)
        expected = tuple(d if isinstance(d, int) and d > 0 else None for d in spec.dims)
        fits = array.ndim == len(expected) and all(e in (None, a) for e, a in zip(expected, array.shape))
        if spec.dims and not fits:
            dims = "x".join(str(d) if d is not None else "N" for d in expected)
            raise InputSpecError(f"{where}: array {spec.name!r} has shape {'x'.join(map(str, array.shape))}, the "
                                 f"model wants {dims}; save an array of that shape")
        feeds[spec.name] = array
    return feeds
