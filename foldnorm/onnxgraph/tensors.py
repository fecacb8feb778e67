"""Checks that every tensor of a model holds exactly the data its type and dims declare.

Nothing here reads a data file or allocates by a tensor's declared size: sizes are computed with Python
ints from the dims and compared with what the message holds (inline) or says it holds (external). A tensor
that fails is an invalid model: `check_tensors` raises `InvalidModelError` naming the tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import external_data_helper, helper

from foldnorm.errors import InvalidModelError

_T = onnx.TensorProto
# Bits per element of the packed sub-byte types (raw data holds ceil(n * bits / 8) bytes).
PACKED_BITS: dict[int, int] = {_T.INT4: 4, _T.UINT4: 4, _T.FLOAT4E2M1: 4, _T.INT2: 2, _T.UINT2: 2, _T.FLOAT6E2M3: 6,
                _T.FLOAT6E3M2: 6}
# Elements per entry of the typed field (int32_data) for the sub-byte types stored packed there.
_PER_FIELD_ENTRY: dict[int, int] = {_T.INT4: 2, _T.UINT4: 2, _T.FLOAT4E2M1: 2, _T.INT2: 4, _T.UINT2: 4}
_NUMBER = re.compile(r"[0-9]{1,20}")

#: The external-data entry foldnorm adds to a tensor kept on disk whose bytes are in no data file of the
#: model: `INLINE`, in the model file itself (`onnxgraph.inline`), or `STORED`, in a `TensorStore`. Loading
#: keeps only the location, offset and length entries of a file's tensors, so no model file can set it.
ORIGIN_KEY = "foldnorm"
INLINE, STORED = "inline", "stored"


@dataclass(frozen=True)
class ExternalRef:
    """Where an external tensor's bytes are: a file (as written in the model), an offset and a length; and,
    for a tensor foldnorm keeps out of the message, where they really are (`INLINE` or `STORED`)."""

    location: str
    offset: int
    length: int
    origin: str | None = None


def set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int,
                 origin: str | None = None) -> None:
    """Make `tensor` external: its bytes are `length` bytes at `offset` of `location` (and come from `origin`)."""
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = [("location", location), ("offset", str(offset)), ("length", str(length))]
    for key, value in entries + ([(ORIGIN_KEY, origin)] if origin else []):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every dense tensor of the model: initializers and tensor attributes, subgraphs and functions included."""
    return list(external_data_helper._get_all_tensors(model))


def graph_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Every dense tensor of one graph: initializers and tensor attributes, its subgraphs included."""
    return [*external_data_helper._get_initializer_tensors_from_graph(graph),
            *external_data_helper._get_attribute_tensors_from_graph(graph)]


def _sparse_tensors(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[onnx.SparseTensorProto]:
    if isinstance(graph, onnx.GraphProto):
        yield from graph.sparse_initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor
            yield from a.sparse_tensors
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                yield from _sparse_tensors(sub)


def element_count(tensor: onnx.TensorProto) -> int:
    """How many elements the tensor's dims declare (a Python int: no overflow)."""
    return math.prod(tensor.dims)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """The bytes of raw data the tensor's type and dims call for (packed for 4-, 2- and 6-bit types)."""
    bits = PACKED_BITS.get(tensor.data_type)
    if bits is None:
        bits = 8 * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return -(-element_count(tensor) * bits // 8)


def _field_entries(tensor: onnx.TensorProto) -> int:
    """The entries of the typed field (float_data, int32_data ...) the tensor's type and dims call for."""
    n = element_count(tensor)
    if tensor.data_type in (_T.COMPLEX64, _T.COMPLEX128):
        return 2 * n
    per = _PER_FIELD_ENTRY.get(tensor.data_type, 1)
    return -(-n // per)


def known_type(data_type: int) -> bool:
    """Whether `data_type` is an element type of this onnx's TensorProto."""
    return data_type != _T.UNDEFINED and data_type in _T.DataType.values()


def external_ref(tensor: onnx.TensorProto, label: str) -> ExternalRef:
    """The tensor's validated external-data entries (`label` names the model in the error).

    The location must be present; offset and length, when given, decimal numbers; the length must be the
    tensor's size. Anything else raises `InvalidModelError` naming the tensor.
    """
    entries = {e.key: e.value for e in tensor.external_data}
    where = f"{label}: tensor {tensor.name!r}"
    location = entries.get("location", "")
    if not location:
        raise InvalidModelError(f"{where} is stored externally but names no data file; re-export the model.")
    numbers: dict[str, int] = {}
    for key in ("offset", "length"):
        text = entries.get(key)
        if text is not None and not _NUMBER.fullmatch(text):
            raise InvalidModelError(f"{where} has external data {key} {text!r}, not a non-negative whole number; "
                                    "re-export the model.")
        numbers[key] = int(text) if text is not None else -1
    expected = tensor_nbytes(tensor)
    length = numbers["length"] if numbers["length"] >= 0 else expected
    if length != expected:
        raise InvalidModelError(f"{where} has external data length {length}, but its type and dims "
                                f"{list(tensor.dims)} need {expected} bytes; re-export the model.")
    return ExternalRef(location, max(numbers["offset"], 0), length, entries.get(ORIGIN_KEY))


def check_tensor(tensor: onnx.TensorProto, label: str, *, inline_bytes: bool = True) -> None:
    """Raise `InvalidModelError` unless the tensor's data matches its type and dims (`label`: the model).

    `inline_bytes=False` leaves out the length of raw data held in the message: reading it copies the bytes
    (upb has no length without a copy), and `external.tensor_array` checks it again whenever it is read.
    """
    where = f"{label}: tensor {tensor.name!r}"
    if any(d < 0 for d in tensor.dims):
        raise InvalidModelError(f"{where} has a negative dimension {list(tensor.dims)}; re-export the model.")
    if not known_type(tensor.data_type):
        raise InvalidModelError(f"{where} has no known element type ({tensor.data_type}); re-export the model.")
    if tensor.HasField("segment"):
        raise InvalidModelError(f"{where} is stored in segments, which foldnorm does not read; re-export the "
                                "model without segments.")
    if tensor.data_location == _T.EXTERNAL:
        if tensor.data_type == _T.STRING or tensor.HasField("raw_data"):
            raise InvalidModelError(f"{where} is marked external but also holds data in the model; re-export it.")
        external_ref(tensor, label)
        return
    if tensor.data_type == _T.STRING:
        held, expected, unit = len(tensor.string_data), element_count(tensor), "strings"
    elif tensor.HasField("raw_data"):
        if not inline_bytes:
            return
        held, expected, unit = len(tensor.raw_data), tensor_nbytes(tensor), "bytes"
    else:
        field = helper.tensor_dtype_to_field(tensor.data_type)
        held, expected, unit = len(getattr(tensor, field)), _field_entries(tensor), f"{field} entries"
    if held != expected:
        raise InvalidModelError(f"{where} holds {held} {unit}, but its type and dims {list(tensor.dims)} need "
                                f"{expected}; re-export the model.")


def check_tensors(model: onnx.ModelProto, label: str, *, inline_bytes: bool = True) -> None:
    """`check_tensor` on every tensor of the model; sparse tensors must be held in the model itself."""
    for tensor in all_tensors(model):
        check_tensor(tensor, label, inline_bytes=inline_bytes)
    for graph in [model.graph, *model.functions]:
        for sparse in _sparse_tensors(graph):
            if onnx.TensorProto.EXTERNAL in (sparse.values.data_location, sparse.indices.data_location):
                raise InvalidModelError(f"{label}: sparse tensor {sparse.values.name!r} is stored externally, "
                                        "which foldnorm does not read; store it in the model.")
