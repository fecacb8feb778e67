"""Weights kept on disk: tensors whose bytes stay in an external data file until something needs them.

A model loaded with `load_model(path, keep_weights_on_disk=True)` has its external tensors point at their
data file by absolute path. The fold engine reads them one at a time (`tensor_array`), replaces only those
it changes, and `save_model` copies the untouched ones file to file. Protobuf (upb) never frees the bytes of
a replaced field before the whole model is freed, so keeping weights out of the message is what keeps peak
memory near the model's size. Absolute locations never reach a written file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from foldnorm.errors import InvalidModelError, ModelLoadError, first_line
from foldnorm.onnxgraph.tensors import ExternalRef, all_tensors, external_ref, tensor_nbytes

# Tensors at least this large go to the data file; offsets are page-aligned so readers can map them.
SIZE_THRESHOLD = 1024
ALIGN = 4096
_CHUNK = 64 << 20


def is_on_disk(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's bytes are in a file rather than in the message."""
    return external_data_helper.uses_external_data(tensor) and not tensor.HasField("raw_data")


def payload_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of data the tensor holds in memory, computed without copying or serializing it.

    (With the upb protobuf backend `ByteSize()` serializes the message, which for a big model costs more
    memory than the model itself.)
    """
    if is_on_disk(tensor):
        return 0
    if tensor.HasField("raw_data"):
        return tensor_nbytes(tensor)
    return 8 * sum(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "int64_data", "double_data",
                                                     "uint64_data")) + sum(len(x) for x in tensor.string_data)


def in_memory_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds in memory (its serialized size, less the graph structure)."""
    return sum(payload_bytes(t) for t in all_tensors(model))


def has_weights_on_disk(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model still lives in an external file."""
    return any(is_on_disk(t) for t in all_tensors(model))


def locate_weights(model: onnx.ModelProto, path: Path) -> None:
    """Check every external tensor of the model at `path` and point it at its data file by absolute path.

    A location must be relative, without `..`, and resolve (symlinks followed) to a regular file inside the
    model's directory, long enough for the tensor. Nothing is opened before all of them pass: a location
    that escapes raises `InvalidModelError`, a missing or short file `ModelLoadError`, both naming the tensor.
    """
    base = path.parent.resolve()
    sizes: dict[Path, int] = {}
    external = [t for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor, ref in [(t, external_ref(t, str(path))) for t in external]:
        data = _inside(base, ref.location, f"{path}: tensor {tensor.name!r}")
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
    """The files the tensors kept on disk are read from (absolute, after `locate_weights`)."""
    return {Path(_ref(t).location) for t in all_tensors(model) if is_on_disk(t)}


def load_weights(model: onnx.ModelProto) -> None:
    """Read every tensor kept on disk into the message (after `locate_weights`)."""
    for tensor in all_tensors(model):
        if is_on_disk(tensor):
            _load_into_message(tensor)


def _ref(tensor: onnx.TensorProto) -> ExternalRef:
    """The entries of a tensor `locate_weights` (or `write_with_external_data`) pointed at its file."""
    return external_ref(tensor, "the model")


def _set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _read_bytes(tensor: onnx.TensorProto) -> bytes:
    ref = _ref(tensor)
    with open(ref.location, "rb") as f:
        f.seek(ref.offset)
        data = f.read(ref.length)
    if len(data) != ref.length:
        raise _ended_early(tensor, ref, ref.length - len(data))
    return data


def _ended_early(tensor: onnx.TensorProto, ref: ExternalRef, missing: int) -> ModelLoadError:
    return ModelLoadError(f"{ref.location}: the external data of tensor {tensor.name!r} ends {missing} bytes "
                          "early (the file changed while it was read); copy the complete file next to the model.")


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's value as a numpy array, read from its file when it is kept on disk.

    Data that does not fit the tensor's type and dims raises `InvalidModelError`.
    """
    loaded = tensor
    if is_on_disk(tensor):
        loaded = onnx.TensorProto()
        loaded.name, loaded.data_type = tensor.name, tensor.data_type
        loaded.dims.extend(tensor.dims)
        loaded.raw_data = _read_bytes(tensor)
    try:
        return numpy_helper.to_array(loaded)
    except (ValueError, TypeError) as exc:
        raise InvalidModelError(f"tensor {tensor.name!r}: its data does not fit its type and dims "
                                f"{list(tensor.dims)} ({first_line(exc)}); re-export the model.") from None


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
                with open(source.location, "rb") as src:
                    src.seek(source.offset)
                    _copy_range(src, out, tensor, source)
            else:
                out.write(tensor.raw_data)
            moved.append((tensor, offset, out.tell() - offset, source))
        out.flush()
        os.fsync(out.fileno())
    try:
        for tensor, offset, length, _ in moved:
            _set_location(tensor, data_name, offset, length)
        model_path.write_bytes(model.SerializeToString())
    finally:
        for tensor, offset, length, source in moved:
            if source is not None:
                _set_location(tensor, source.location, source.offset, source.length)
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


def _copy_range(src: BinaryIO, dst: BinaryIO, tensor: onnx.TensorProto, ref: ExternalRef) -> None:
    remaining = ref.length
    while remaining > 0:
        chunk = src.read(min(_CHUNK, remaining))
        if not chunk:
            raise _ended_early(tensor, ref, remaining)
        dst.write(chunk)
        remaining -= len(chunk)
