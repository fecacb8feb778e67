"""Weights kept on disk: tensors whose bytes stay in an external data file until something needs them.

A model loaded with `load_model(path, keep_weights_on_disk=True)` has its external tensors point at their
data file by absolute path. The fold engine reads them one at a time (`tensor_array`), replaces only those
it changes, and `save_model` copies the untouched ones file to file. Protobuf (upb) never frees the bytes of
a replaced field before the whole model is freed, so keeping weights out of the message is what keeps peak
memory near the model's size. Absolute locations never reach a written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from foldnorm.errors import InvalidModelError, ModelLoadError, first_line
from foldnorm.onnxgraph.inline import write_spliced
from foldnorm.onnxgraph.store import stored_array
from foldnorm.onnxgraph.tensors import INLINE, STORED, ExternalRef, all_tensors, external_ref, tensor_nbytes
from foldnorm.onnxgraph.tensors import set_location as _set_location

# Tensors at least this large go to the data file; offsets are page-aligned so readers can map them.
SIZE_THRESHOLD = 1024
ALIGN = 4096
_CHUNK = 64 << 20
_T = onnx.TensorProto
# Types whose raw bytes numpy reads as they are (the packed 2-, 4- and 6-bit types go through onnx).
_PLAIN = frozenset({_T.FLOAT, _T.DOUBLE, _T.FLOAT16, _T.BFLOAT16, _T.INT8, _T.UINT8, _T.INT16, _T.UINT16, _T.INT32,
                    _T.UINT32, _T.INT64, _T.UINT64, _T.BOOL, _T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2,
                    _T.FLOAT8E5M2FNUZ})


def is_on_disk(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's bytes are in a file rather than in the message."""
    return external_data_helper.uses_external_data(tensor) and not tensor.HasField("raw_data")


def payload_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of data the tensor adds to a model written as one file, computed without copying or serializing
    it: what it holds in the message, or the length of bytes kept for it in the model file or a `TensorStore`.

    (With the upb protobuf backend `ByteSize()` serializes the message, which for a big model costs more
    memory than the model itself.)
    """
    if is_on_disk(tensor):
        ref = _ref(tensor)
        return ref.length if ref.origin is not None else 0
    if tensor.HasField("raw_data"):
        return tensor_nbytes(tensor)
    return 8 * sum(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "int64_data", "double_data",
                                                     "uint64_data")) + sum(len(x) for x in tensor.string_data)


def in_memory_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds in memory (its serialized size, less the graph structure)."""
    return sum(payload_bytes(t) for t in all_tensors(model))


def has_weights_on_disk(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model is kept out of the message (in a file, or in a `TensorStore`)."""
    return any(is_on_disk(t) for t in all_tensors(model))


def has_data_files(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model lives in an external data file (not the model file, not a store)."""
    return any(is_on_disk(t) and _ref(t).origin is None for t in all_tensors(model))


def mark_inline(tensors: list[onnx.TensorProto]) -> None:
    """Record that these tensors (located by `locate_weights`) are the model file's own inline data."""
    for tensor in tensors:
        ref = _ref(tensor)
        _set_location(tensor, ref.location, ref.offset, ref.length, INLINE)


def locate_weights(model: onnx.ModelProto, path: Path) -> None:
    """Check every external tensor of the model at `path` and point it at its data file by absolute path.

    A location must be relative, without `..`, and resolve (symlinks followed) to a regular file inside the
    model's directory, long enough for the tensor. Nothing is opened before all of them pass: a location
    that escapes raises `InvalidModelError`, a missing or short file `ModelLoadError`, both naming the tensor.
    """
    base = path.parent.resolve()
    sizes: dict[Path, int] = {}
    files: dict[str, Path] = {}  # by location: most tensors share one data file (the inline ones: the model's)
    external = [t for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor, ref in [(t, external_ref(t, str(path))) for t in external]:
        if ref.location not in files:
            files[ref.location] = _inside(base, ref.location, f"{path}: tensor {tensor.name!r}")
        data = files[ref.location]
        if data not in sizes:
            sizes[data] = _data_file_size(data, path.parent / ref.location, path)
        if ref.offset + ref.length > sizes[data]:
            raise ModelLoadError(
                f"{path}: its external data file {path.parent / ref.location} is truncated ({sizes[data]} bytes, "
                f"tensor {tensor.name!r} needs {ref.offset + ref.length}); copy the complete file next to the model."
            )
        _set_location(tensor, str(data), ref.offset, ref.length)


def _inside(base: Path, location: str, where: str) -> Path:
    """The file `location` names in directory `base`, refused unless it stays inside `base`."""
    parts = location.replace("\\", "/").split("/")
    why = ("it is absolute" if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute()
           or PureWindowsPath(location).drive else
           "it has a '..' component" if ".." in parts else
           "it holds a NUL byte" if "\0" in location else None)
    if why is None:
        try:
            resolved = (base / location).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
            why = f"it cannot be resolved: {exc}"
        else:
            if resolved.is_relative_to(base):
                return resolved
            why = f"it resolves to {resolved}"
    raise InvalidModelError(f"{where} has external data location {location!r} outside the model's directory "
                            f"({why}); keep its data file in the model's directory, named by a relative path.")


def _data_file_size(data: Path, named: Path, path: Path) -> int:
    """The size of the data file `data` (`named` as the model names it) of the model at `path`."""
    try:
        info = data.stat()
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        problem = "is missing" if info is None else "is not a regular file"
        raise ModelLoadError(f"{path}: its external data file {named} {problem}; copy it next to the model (it is "
                             "written beside the .onnx at export).")
    return info.st_size


def data_files(model: onnx.ModelProto) -> set[Path]:
    """The external data files the tensors kept on disk are read from (absolute, after `locate_weights`)."""
    refs = [_ref(t) for t in all_tensors(model) if is_on_disk(t)]
    return {Path(ref.location) for ref in refs if ref.origin is None}


def load_weights(model: onnx.ModelProto) -> None:
    """Read every tensor kept on disk into the message (after `locate_weights`)."""
    for tensor in all_tensors(model):
        if is_on_disk(tensor):
            _load_into_message(tensor)


def _ref(tensor: onnx.TensorProto) -> ExternalRef:
    """The entries of a tensor `locate_weights` (or `write_with_external_data`) pointed at its file."""
    return external_ref(tensor, "the model")


def _read_bytes(tensor: onnx.TensorProto) -> bytes:
    ref = _ref(tensor)
    if ref.origin == STORED:
        return _raw(stored_array(ref)).tobytes()
    with open(ref.location, "rb") as f:
        f.seek(ref.offset)
        data = f.read(ref.length)
    if len(data) != ref.length:
        raise _ended_early(tensor, ref, ref.length - len(data))
    return data


def _raw(array: np.ndarray) -> np.ndarray:
    """The bytes of a contiguous array, as uint8 (ml_dtypes types have no buffer format)."""
    return array.reshape(-1).view(np.uint8)


def _ended_early(tensor: onnx.TensorProto, ref: ExternalRef, missing: int) -> ModelLoadError:
    return ModelLoadError(f"{ref.location}: the external data of tensor {tensor.name!r} ends {missing} bytes "
                          "early (the file changed while it was read); copy the complete file next to the model.")


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's value as a numpy array, read from its file (or its `TensorStore`) when it is kept on disk.

    Data that does not fit the tensor's type and dims raises `InvalidModelError`.
    """
    loaded = tensor
    if is_on_disk(tensor):
        ref = _ref(tensor)
        if ref.origin == STORED:
            return stored_array(ref)
        if tensor.data_type in _PLAIN and sys.byteorder == "little":
            return _read_array(tensor, ref)
        loaded = onnx.TensorProto()
        loaded.name, loaded.data_type = tensor.name, tensor.data_type
        loaded.dims.extend(tensor.dims)
        loaded.raw_data = _read_bytes(tensor)
    try:
        return numpy_helper.to_array(loaded)
    except (ValueError, TypeError) as exc:
        raise InvalidModelError(f"tensor {tensor.name!r}: its data does not fit its type and dims "
                                f"{list(tensor.dims)} ({first_line(exc)}); re-export the model.") from None


def _read_array(tensor: onnx.TensorProto, ref: ExternalRef) -> np.ndarray:
    """A tensor of a fixed-size type read from its file straight into an array (one copy, not three)."""
    array = np.empty(tuple(tensor.dims), helper.tensor_dtype_to_np_dtype(tensor.data_type))
    with open(ref.location, "rb") as f:
        f.seek(ref.offset)
        got = f.readinto(_raw(array).data)
    if got != ref.length:
        raise _ended_early(tensor, ref, ref.length - got)
    return array


def tensor_digest(tensor: onnx.TensorProto) -> bytes:
    """A digest of the tensor's name, type, shape and contents, the same wherever the contents are stored."""
    h = hashlib.sha256(f"{tensor.name}|{tensor.data_type}|{list(tensor.dims)}|".encode())
    if is_on_disk(tensor):
        h.update(_read_bytes(tensor))
    elif tensor.HasField("raw_data"):
        h.update(tensor.raw_data)
    else:
        h.update(numpy_helper.to_array(tensor).tobytes())
    return h.digest()


def write_with_external_data(model: onnx.ModelProto, model_path: Path, data_name: str, *,
                             keep_in_memory: bool = True) -> int:
    """Write `model` to `model_path` and its large tensors to `data_name` beside it; return how many.

    With no tensor large enough, no data file is left.

    Tensors kept on disk are copied file to file and keep pointing at their source. Tensors held in memory
    are written out; with `keep_in_memory` they are read back afterwards, so the caller's model is as it
    was (for a big model that costs its size again: protobuf keeps the old bytes), otherwise they are left
    pointing at the written file by absolute path (for a caller that drops the model next).
    """
    data_path = model_path.parent / data_name
    moved: list[tuple[onnx.TensorProto, int, int, ExternalRef | None]] = []
    with open(data_path, "wb") as out:
        for tensor in all_tensors(model):
            on_disk = is_on_disk(tensor)
            if not on_disk and not (tensor.HasField("raw_data") and payload_bytes(tensor) >= SIZE_THRESHOLD):
                continue
            out.write(b"\0" * (-out.tell() % ALIGN))
            offset = out.tell()
            source = _ref(tensor) if on_disk else None
            if source is not None:
                _write_bytes(tensor, source, out)
            else:
                out.write(tensor.raw_data)
            moved.append((tensor, offset, out.tell() - offset, source))
    try:
        for tensor, offset, length, _ in moved:
            _set_location(tensor, data_name, offset, length)
        model_path.write_bytes(model.SerializeToString())
    finally:
        for tensor, offset, length, source in moved:
            if source is not None:
                _set_location(tensor, source.location, source.offset, source.length, source.origin)
            else:
                _set_location(tensor, str(data_path.resolve()), offset, length)
                if keep_in_memory:
                    _load_into_message(tensor)
    if not moved:
        data_path.unlink()
    return len(moved)


def rename_data_file(model_path: Path, old: str, new: str, dest: Path) -> None:
    """Write the model at `model_path` to `dest` with its tensors stored in data file `old` now in `new`."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            ref = _ref(tensor)
            if ref.location == old:
                _set_location(tensor, new, ref.offset, ref.length)
    dest.write_bytes(model.SerializeToString())


def _load_into_message(tensor: onnx.TensorProto) -> None:
    data = _read_bytes(tensor)
    tensor.ClearField("data_location")
    del tensor.external_data[:]
    tensor.raw_data = data


def write_inline(model: onnx.ModelProto, path: Path) -> None:
    """Write `model` to `path` as one file, never reading the tensors it keeps on disk into the message: those
    of the main graph are copied into the file from where they are (`inline.write_spliced`), others loaded."""
    main = list(model.graph.initializer)
    kept = {id(t) for t in main}
    for tensor in all_tensors(model):
        if is_on_disk(tensor) and id(tensor) not in kept:
            _load_into_message(tensor)
    sources = {k: (_ref(t).length, partial(_write_bytes, t, _ref(t))) for k, t in enumerate(main) if is_on_disk(t)}
    if sources:
        write_spliced(model, path, sources)
    else:
        onnx.save_model(model, str(path))


def _write_bytes(tensor: onnx.TensorProto, ref: ExternalRef, out: BinaryIO) -> None:
    """Append the bytes of a tensor kept on disk to `out`: from its store, or copied file to file."""
    if ref.origin == STORED:
        out.write(_raw(stored_array(ref)).data)
        return
    out.flush()
    with open(ref.location, "rb") as src:
        done = 0
        with contextlib.suppress(OSError):  # no copy_file_range here (or across these file systems)
            while done < ref.length:
                step = os.copy_file_range(src.fileno(), out.fileno(), min(_CHUNK, ref.length - done),
                                          ref.offset + done)
                if step == 0:
                    raise _ended_early(tensor, ref, ref.length - done)
                done += step
        out.seek(0, os.SEEK_END)  # the copies moved the file's offset behind the buffered writer's back
        src.seek(ref.offset + done)
        while done < ref.length:
            chunk = src.read(min(_CHUNK, ref.length - done))
            if not chunk:
                raise _ended_early(tensor, ref, ref.length - done)
            out.write(chunk)
            done += len(chunk)
