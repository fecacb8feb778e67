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
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

# Tensors at least this large go to the data file; offsets are page-aligned so readers can map them.
SIZE_THRESHOLD = 1024
ALIGN = 4096
_CHUNK = 64 << 20


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, subgraphs included."""
    return list(external_data_helper._get_all_tensors(model))


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


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
        return _dense_bytes(tensor)
    return 8 * sum(len(getattr(tensor, f)) for f in ("float_data", "int32_data", "int64_data", "double_data",
                                                     "uint64_data")) + sum(len(x) for x in tensor.string_data)


def in_memory_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data the model holds in memory (its serialized size, less the graph structure)."""
    return sum(payload_bytes(t) for t in all_tensors(model))


def has_weights_on_disk(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model still lives in an external file."""
    return any(is_on_disk(t) for t in all_tensors(model))


def point_to_files(model: onnx.ModelProto, base_dir: Path) -> None:
    """Make the external tensors' locations absolute, so they can be read wherever the model goes."""
    for tensor in all_tensors(model):
        if is_on_disk(tensor):
            entries = _entries(tensor)
            _set_location(tensor, str((base_dir / entries["location"]).resolve()),
                          int(entries.get("offset", 0)), _length(tensor, entries))


def _dense_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _length(tensor: onnx.TensorProto, entries: dict[str, str]) -> int:
    return int(entries["length"]) if "length" in entries else _dense_bytes(tensor)


def _set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _read_bytes(tensor: onnx.TensorProto) -> bytes:
    entries = _entries(tensor)
    with open(entries["location"], "rb") as f:
        f.seek(int(entries.get("offset", 0)))
        return f.read(_length(tensor, entries))


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's value as a numpy array, read from its file when it is kept on disk."""
    if not is_on_disk(tensor):
        return numpy_helper.to_array(tensor)
    loaded = onnx.TensorProto()
    loaded.name, loaded.data_type = tensor.name, tensor.data_type
    loaded.dims.extend(tensor.dims)
    loaded.raw_data = _read_bytes(tensor)
    return numpy_helper.to_array(loaded)


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
    moved: list[tuple[onnx.TensorProto, int, int, dict[str, str] | None]] = []
    with open(data_path, "wb") as out:
        for tensor in all_tensors(model):
            on_disk = is_on_disk(tensor)
            if not on_disk and not (tensor.HasField("raw_data") and payload_bytes(tensor) >= SIZE_THRESHOLD):
                continue
            out.write(b"\0" * (-out.tell() % ALIGN))
            offset = out.tell()
            source = _entries(tensor) if on_disk else None
            if source is not None:
                with open(source["location"], "rb") as src:
                    src.seek(int(source.get("offset", 0)))
                    _copy_range(src, out, _length(tensor, source))
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
                _set_location(tensor, source["location"], int(source.get("offset", 0)), _length(tensor, source))
            else:
                _set_location(tensor, str(data_path.resolve()), offset, length)
                if keep_in_memory:
                    _load_into_message(tensor)
    if not moved:
        data_path.unlink()
    return len(moved)


def _load_into_message(tensor: onnx.TensorProto) -> None:
    data = _read_bytes(tensor)
    tensor.ClearField("data_location")
    del tensor.external_data[:]
    tensor.raw_data = data


def _copy_range(src: BinaryIO, dst: BinaryIO, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = src.read(min(_CHUNK, remaining))
        if not chunk:
            raise OSError(f"external data ended {remaining} bytes early")
        dst.write(chunk)
        remaining -= len(chunk)
