"""Tensors a fold rewrote, held as numpy arrays outside the protobuf until the model is written.

Protobuf (upb) copies bytes into a message, copies them again to serialize it, and frees nothing before the
whole message goes. A `TensorStore` keeps the new weights of a fold instead: the tensor in the model becomes
an external reference to an array of the store (`set_location` with origin `STORED`), read back by
`external.tensor_array` and written into the output by the model writers. The store must stay open while the
model is used; `fold_file` opens one around load, fold and write.

`TensorStore(values=False)` (for `inspect`) keeps the shape and type of a big weight but not its values:
`read` answers with a zero-filled stand-in that takes no memory (a broadcast view), for tensors kept on disk
as well as stored ones, so that a report of what would fold never reads the weights.
"""

from __future__ import annotations

import itertools
import sys
import weakref
from types import TracebackType

import numpy as np
import onnx
from onnx import helper

from foldnorm.onnxgraph.tensors import PACKED_BITS, STORED, ExternalRef, set_location

# Tensors smaller than this stay in the message: the bookkeeping would cost more than the bytes.
MIN_BYTES = 1024
_TYPED = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
_live: weakref.WeakValueDictionary[str, TensorStore] = weakref.WeakValueDictionary()
_ids = itertools.count()


def is_matrix(dims: list[int] | tuple[int, ...]) -> bool:
    """Whether a tensor of `dims` is a weight whose values `inspect` leaves unread: two or more axes longer
    than 1 (a per-channel constant [1,C,1,1] or a bias is read)."""
    return sum(1 for d in dims if d > 1) >= 2


class TensorStore:
    """Arrays written for tensors of a model, outside its protobuf; see the module docstring."""

    def __init__(self, *, values: bool = True) -> None:
        self.values = values
        self.key = f"<foldnorm tensor store {next(_ids)}>"
        self._arrays: list[np.ndarray] = []
        _live[self.key] = self

    def takes(self, array: np.ndarray) -> bool:
        """Whether `put` keeps `array` here: big enough, of a type whose raw data is its bytes as they are
        (no strings, no packed 4-bit types), on a little-endian machine."""
        if array.nbytes < MIN_BYTES or sys.byteorder != "little" or array.dtype.kind not in "biufV":
            return False
        try:
            data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        except (KeyError, ValueError, TypeError):
            return False
        return data_type not in PACKED_BITS

    def put(self, tensor: onnx.TensorProto, array: np.ndarray) -> None:
        """Make `tensor` hold `array` (its type and shape too), kept here rather than in the message."""
        if not self.values and is_matrix(array.shape):
            array = np.broadcast_to(np.zeros((), array.dtype), array.shape)
        else:
            array = np.ascontiguousarray(array)
            array.flags.writeable = False
        for name in _TYPED:
            tensor.ClearField(name)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        del tensor.dims[:]
        tensor.dims.extend(array.shape)
        self._arrays.append(array)
        set_location(tensor, self.key, len(self._arrays) - 1, array.nbytes, STORED)

    def array(self, slot: int) -> np.ndarray:
        """The array in `slot` (read-only)."""
        return self._arrays[slot]

    def close(self) -> None:
        """Drop every array; tensors that point here can no longer be read."""
        self._arrays.clear()
        _live.pop(self.key, None)

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def stored_array(ref: ExternalRef) -> np.ndarray:
    """The array a `STORED` reference points at; `LookupError` once its store is closed."""
    store = _live.get(ref.location)
    if store is None:
        raise LookupError(f"{ref.location} is closed: the model that points into it is no longer readable")
    return store.array(ref.offset)


def stand_in(tensor: onnx.TensorProto) -> np.ndarray:
    """Zeros of the tensor's shape and type that take no memory (a broadcast view)."""
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.broadcast_to(np.zeros((), dtype), tuple(tensor.dims))
