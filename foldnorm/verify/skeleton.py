"""A model with weights kept on disk opened on ONNX Runtime without writing or copying its weights.

A model loaded with its weights on disk (`onnxgraph.external`: in its own file, an external data file, or a
`TensorStore`) is given to ONNX Runtime as a small skeleton file, written to a work folder, and its big
main-graph initializers as shared initializers (`SessionOptions.add_initializer`): numpy arrays that ONNX
Runtime uses in place. An initializer whose bytes start 16-byte aligned in its file is a read-only memory map
of it, one held in a store is the store's array: neither is copied. One that is not aligned (an inline
initializer sits wherever protobuf put it) is read once into an aligned array, as ONNX Runtime itself does
(it maps only aligned external data). In the skeleton such an initializer names an empty placeholder file: ONNX
Runtime never reads it, and would fail loudly rather than read zeros if it did.
"""

from __future__ import annotations

import mmap
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from foldnorm.onnxgraph.external import is_on_disk, load_weights, tensor_array
from foldnorm.onnxgraph.modelio import needs_external_data
from foldnorm.onnxgraph.store import stored_array
from foldnorm.onnxgraph.tensors import STORED, external_ref, set_location

_T = onnx.TensorProto
#: Initializer types ONNX Runtime takes from a numpy array of the same bytes (the others are read into the
#: skeleton: bfloat16, float8 and the packed types have no numpy type it accepts).
SHAREABLE: dict[int, np.dtype] = {t: np.dtype(d) for t, d in {
    _T.FLOAT: np.float32, _T.DOUBLE: np.float64, _T.FLOAT16: np.float16, _T.INT8: np.int8, _T.UINT8: np.uint8,
    _T.INT16: np.int16, _T.UINT16: np.uint16, _T.INT32: np.int32, _T.UINT32: np.uint32, _T.INT64: np.int64,
    _T.UINT64: np.uint64, _T.BOOL: np.bool_}.items()}
#: Bytes a shared array's address must be a multiple of (any element type's size, and SIMD loads').
ALIGN = 16
PLACEHOLDER = "weights.placeholder"


@dataclass
class Skeleton:
    """What ONNX Runtime opens: the skeleton file and the initializers it shares (by name)."""

    path: Path
    initializers: dict[str, np.ndarray] = field(default_factory=dict)


def write_skeleton(model: onnx.ModelProto, path: Path) -> Skeleton | None:
    """Write `model` to `path` without the bytes of its main-graph initializers kept on disk, and return those
    as arrays to share with the session (views of their files or stores where aligned, else read once).

    `model` is not changed. Other tensors kept on disk (in subgraphs, in Constant nodes) are read into the
    skeleton; None (nothing written) when what it then holds is too big for one protobuf.
    """
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)  # the weights kept on disk are not in the message: a small copy
    graph = skeleton.graph
    maps: dict[str, np.ndarray] = {}
    shared: dict[str, np.ndarray] = {}
    held, placed = [], []
    for tensor in graph.initializer:
        array = _share(tensor, maps) if is_on_disk(tensor) else None
        if array is None:
            held.append(tensor)
            continue
        shared[tensor.name] = array
        stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        set_location(stub, PLACEHOLDER, 0, array.nbytes)
        placed.append(stub)
    del graph.initializer[:]
    graph.initializer.extend(held)
    load_weights(skeleton)  # what is left on disk: subgraphs, Constant nodes, types not shared
    graph.initializer.extend(placed)
    if needs_external_data(skeleton):
        return None
    path.parent.joinpath(PLACEHOLDER).touch()
    path.write_bytes(skeleton.SerializeToString())
    return Skeleton(path, shared)


def _share(tensor: onnx.TensorProto, maps: dict[str, np.ndarray]) -> np.ndarray | None:
    """The array ONNX Runtime can use in place for a main-graph initializer kept on disk, or None."""
    dtype = SHAREABLE.get(tensor.data_type)
    if dtype is None or sys.byteorder != "little":
        return None
    ref = external_ref(tensor, "the model")
    shape = tuple(tensor.dims)
    if not ref.length:
        return None
    if ref.origin == STORED:
        array = stored_array(ref)
        if array.dtype != dtype or array.shape != shape:  # (a store holds what the tensor declares)
            return None
    elif ref.offset % ALIGN == 0:
        whole = maps.get(ref.location)
        if whole is None:
            whole = maps[ref.location] = _mapped(Path(ref.location))
        array = whole[ref.offset:ref.offset + ref.length].view(dtype).reshape(shape)
    else:
        array = tensor_array(tensor)
    return array if array.ctypes.data % ALIGN == 0 and array.flags.c_contiguous else np.array(array)


def _mapped(path: Path) -> np.ndarray:
    """The file at `path` as read-only bytes, mapped (pages are read when a session touches them)."""
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)

