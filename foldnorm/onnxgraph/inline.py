"""Inline weights left in their file: a model parsed without the bytes of its large initializers, and written
back with them spliced in.

`read_skeleton` scans the file's wire format (`foldnorm.onnxgraph.wire`) for the main graph's initializers
that hold at least `SIZE_THRESHOLD` bytes of `raw_data`, and parses the model without those bytes: each such
tensor comes back as an external tensor that points into the model file itself (location: the file's name,
offset and length of its raw data), so everything that reads external tensors reads it one at a time from
the file and the protobuf never holds the weights. `write_spliced` writes a model whose main-graph
initializers are kept on disk (in the source file, an external data file or a `TensorStore`) as one inline
file: the small skeleton is serialized, then each such tensor's bytes are copied into it from where they are.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from foldnorm.onnxgraph import wire
from foldnorm.onnxgraph.tensors import known_type, tensor_nbytes

# ModelProto.graph, GraphProto.initializer; TensorProto fields.
_GRAPH, _INITIALIZER = 7, 5
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA, _DOC, _EXTERNAL_DATA, _DATA_LOCATION, _METADATA = 1, 2, 8, 9, 12, 13, 14, 16
# The fields a plain raw-data tensor may have; any other (typed data, segments, external data) and it is
# left in the message for the loader's checks.
_PLAIN = frozenset({_DIMS, _DATA_TYPE, _NAME, _RAW_DATA, _DOC, _METADATA})


def read_skeleton(path: Path, threshold: int) -> tuple[onnx.ModelProto, list[tuple[int, int, int]]] | None:
    """The model at `path` without the raw data of main-graph initializers of at least `threshold` bytes.

    Returns `(model, spans)`: each span `(k, offset, length)` says that initializer `k` of the main graph is
    external, at `offset` in the model file (named by its file name), `length` bytes long. Returns None when
    there is nothing to leave out or the file is laid out in a way this reader leaves to the protobuf parser
    (a graph in several pieces, a symlinked file, malformed wire data): the caller then parses it whole.
    """
    if path.is_symlink():
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            found = _scan(buf, threshold)
            if found is None:
                return None
            graph, tensors = found
            pieces, spans = _without_raw_data(buf, graph, tensors, path.name)
            head = buf[:graph.start] + wire.len_header(_GRAPH, sum(len(p) for p in pieces))
            skeleton = b"".join([head, *pieces, buf[graph.end:]])
        except wire.WireError:
            return None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(skeleton)
    except DecodeError:  # the whole-file parse reports it
        return None
    # A tensor whose bytes do not fit its type and dims is left to the whole-file parse and its checks.
    for k, _, length in spans:
        tensor = model.graph.initializer[k]
        if (not known_type(tensor.data_type) or tensor.data_type == onnx.TensorProto.STRING
                or any(d < 0 for d in tensor.dims) or tensor_nbytes(tensor) != length):
            return None
    return model, spans


def _scan(buf: mmap.mmap, threshold: int) -> tuple[wire.Field, list[tuple[int, wire.Field, wire.Field]]] | None:
    """The main graph's field and its big plain initializers `(k, entry, raw data field)`, or None."""
    graphs = [f for f in wire.fields(buf, 0, len(buf)) if f.number == _GRAPH]
    if len(graphs) != 1 or graphs[0].wire_type != wire.LEN:
        return None
    graph = graphs[0]
    tensors: list[tuple[int, wire.Field, wire.Field]] = []
    for k, entry in wire.long_entries(buf, graph.value_start, graph.end, _INITIALIZER, threshold):
        raw = _plain_raw_data(buf, entry)
        if raw is not None and raw.end - raw.value_start >= threshold:
            tensors.append((k, entry, raw))
    return (graph, tensors) if tensors else None


def _plain_raw_data(buf: mmap.mmap, entry: wire.Field) -> wire.Field | None:
    """The raw_data field of a tensor entry that has plain fields only and one raw_data, else None."""
    raw = None
    for f in wire.fields(buf, entry.value_start, entry.end):
        if f.number not in _PLAIN or (f.number == _RAW_DATA and (raw is not None or f.wire_type != wire.LEN)):
            return None
        if f.number == _RAW_DATA:
            raw = f
    return raw


def _without_raw_data(buf: mmap.mmap, graph: wire.Field, tensors: list[tuple[int, wire.Field, wire.Field]],
                      location: str) -> tuple[list[bytes], list[tuple[int, int, int]]]:
    """The graph's bytes with each tensor's raw data replaced by a reference into the file."""
    pieces: list[bytes] = []
    spans: list[tuple[int, int, int]] = []
    pos = graph.value_start
    for k, entry, raw in tensors:
        length = raw.end - raw.value_start
        body = b"".join([buf[entry.value_start:raw.start], buf[raw.end:entry.end],
                         _external_entries(location, raw.value_start, length)])
        pieces += [buf[pos:entry.start], wire.len_header(_INITIALIZER, len(body)), body]
        spans.append((k, raw.value_start, length))
        pos = entry.end
    pieces.append(buf[pos:graph.end])
    return pieces, spans


def _external_entries(location: str, offset: int, length: int) -> bytes:
    """The external_data entries and data_location of a tensor stored at `offset` in file `location`."""
    out = []
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        k, v = key.encode(), value.encode()
        pair = wire.len_header(1, len(k)) + k + wire.len_header(2, len(v)) + v
        out.append(wire.len_header(_EXTERNAL_DATA, len(pair)) + pair)
    out.append(wire.varint(_DATA_LOCATION << 3 | wire.VARINT) + wire.varint(onnx.TensorProto.EXTERNAL))
    return b"".join(out)


#: Writes the raw bytes of a main-graph initializer to the open output file.
Source = Callable[[BinaryIO], None]


def write_spliced(model: onnx.ModelProto, path: Path, sources: Mapping[int, tuple[int, Source]]) -> None:
    """Write `model` to `path` as one file, the raw data of main-graph initializer k taken from `sources[k]`
    (`(length, write)`) instead of the message, where each of them is an external reference."""
    skeleton = model.SerializeToString()
    graph = next(f for f in wire.fields(skeleton, 0, len(skeleton)) if f.number == _GRAPH)
    pieces = _graph_pieces(memoryview(skeleton), graph, sources)
    with open(path, "wb") as out:
        out.write(skeleton[:graph.start])
        out.write(wire.len_header(_GRAPH, sum(len(data) + n for data, n, _ in pieces)))
        for data, _, write in pieces:
            out.write(data)
            if write is not None:
                write(out)
        out.write(skeleton[graph.end:])


def _graph_pieces(skeleton: memoryview, graph: wire.Field, sources: Mapping[int, tuple[int, Source]]
                  ) -> list[tuple[bytes | memoryview, int, Source | None]]:
    """The graph's content as `(bytes, raw length, raw writer)` pieces: runs of the skeleton kept as they
    are, and each sourced initializer without its external reference, up to its raw data's header."""
    pieces: list[tuple[bytes | memoryview, int, Source | None]] = []
    pos, k = graph.value_start, 0
    for f in wire.fields(skeleton, graph.value_start, graph.end):
        if f.number != _INITIALIZER:
            continue
        source = sources.get(k)
        k += 1
        if source is None:
            continue
        length, write = source
        kept = b"".join(skeleton[g.start:g.end] for g in wire.fields(skeleton, f.value_start, f.end)
                        if g.number not in (_EXTERNAL_DATA, _DATA_LOCATION))
        raw = wire.len_header(_RAW_DATA, length)
        head = wire.len_header(_INITIALIZER, len(kept) + len(raw) + length) + kept + raw
        pieces += [(skeleton[pos:f.start], 0, None), (head, length, write)]
        pos = f.end
    pieces.append((skeleton[pos:graph.end], 0, None))
    return pieces
