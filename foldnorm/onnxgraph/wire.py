"""The protobuf wire format, as far as foldnorm reads and writes an ONNX file by hand.

A serialized message is a sequence of fields, each a varint tag (`field number << 3 | wire type`) and a
value: a varint (type 0), 8 bytes (type 1), a length-prefixed byte string (type 2, which is also how a
nested message is stored) or 4 bytes (type 5). Fields may come in any order and a parser keeps the last of
a repeated scalar, so a tool may skip over a weight's bytes without reading them and may write a message
from pieces. `Field` spans index the buffer they were read from; nothing here copies a value's bytes.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import NamedTuple, TypeAlias

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
Buffer: TypeAlias = bytes | memoryview | mmap.mmap


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


class Field(NamedTuple):
    """One field of a message: its number and wire type, where it starts (at its tag) and where its value
    lies (`value` is the varint itself for type 0, else the value's byte span)."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int
    value: int = 0


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; `WireError` past `end` or over 10 bytes."""
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("a varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def fields(buf: Buffer, start: int, end: int) -> Iterator[Field]:
    """The fields of the message held in `buf[start:end]`, in order; `WireError` when it is malformed."""
    pos = start
    while pos < end:
        at = pos
        key, pos = read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield Field(number, wire_type, at, at, pos, value)
            continue
        if wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            value_start = pos
        elif wire_type in (FIXED64, FIXED32):
            length, value_start = (8 if wire_type == FIXED64 else 4), pos
        else:
            raise WireError(f"wire type {wire_type} (groups are not used by ONNX)")
        pos = value_start + length
        if pos > end:
            raise WireError("a field runs past the end of its message")
        yield Field(number, wire_type, at, value_start, pos)


def long_entries(buf: Buffer, start: int, end: int, number: int, min_length: int
                 ) -> Iterator[tuple[int, Field]]:
    """`(k, field)` for the k-th field `number` of the message in `buf[start:end]` whose value is at least
    `min_length` bytes long (a length-delimited field), in order; every field is checked as `fields` does.

    (The loop over the fields of a graph of a million nodes: it builds nothing for the fields it passes.)
    """
    pos, k = start, 0
    while pos < end:
        at = pos
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = read_varint(buf, at, end)
        field_number, wire_type = key >> 3, key & 7
        if field_number == 0:
            raise WireError("field number 0")
        if wire_type == LEN:
            length = buf[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = read_varint(buf, pos, end)
            value_start, pos = pos, pos + length
        elif wire_type == VARINT:
            _, pos = read_varint(buf, pos, end)
            value_start = pos
        elif wire_type in (FIXED64, FIXED32):
            value_start, pos = pos, pos + (8 if wire_type == FIXED64 else 4)
        else:
            raise WireError(f"wire type {wire_type} (groups are not used by ONNX)")
        if pos > end:
            raise WireError("a field runs past the end of its message")
        if field_number == number:
            if wire_type == LEN and pos - value_start >= min_length:
                yield k, Field(number, wire_type, at, value_start, pos)
            k += 1


def varint(value: int) -> bytes:
    """`value` (>= 0) as a varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def len_header(number: int, length: int) -> bytes:
    """The tag and length prefix of a length-delimited field `number` holding `length` bytes."""
    return varint(number << 3 | LEN) + varint(length)
