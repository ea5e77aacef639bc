"""Checks of a GGUF's tensor info records and data layout, each failure naming the tensor or the count to blame.

A tensor info record is: name (u64 length + bytes), n_dims (u32), n_dims u64 dims (ggml order),
type (u32), data offset (u64, relative to the aligned start of the data section).
"""

from __future__ import annotations

import itertools
import math
import struct

from qprof.errors import UnsupportedError
from qprof.quant.traits import ALL_TYPES, traits_for_ggml_type

GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # llama.cpp's limit on a tensor name, terminator included
MAX_ELEMENTS = 1 << 40  # no tensor of a model qprof runs comes near this; larger means a corrupt dim
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, name, n_dims, one dim, type, offset


class ReadAbort(Exception):
    """Internal: carries a finished one-line message out of the reader (the file name is added outside)."""


def count_hint(index: int, declared: int) -> str:
    """A bad last record usually means the header claims more tensors than the file holds."""
    return "; the header's tensor count may exceed the tensors present" if index == declared else ""


def decode_name(raw: bytes, what: str) -> str:
    """A key or tensor name as text; one that is not UTF-8 is a clear error, not Python's codec message."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadAbort(f"{what} has a name that is not valid UTF-8 (byte {exc.start} of {raw[:40]!r})") from None


def tensor_name(field) -> str:
    try:
        return bytes(field.parts[1]).decode("utf-8")
    except UnicodeDecodeError:
        return repr(bytes(field.parts[1])[:40])


def check_tensor_info(field, index: int, declared: int) -> None:
    """Name, dims and type of one tensor info record; a bad one usually means a lying tensor count."""
    from gguf import GGMLQuantizationType

    _len, name_data, _n_dims, dims, raw_type, _offset = field.parts
    hint = count_hint(index, declared)
    name = decode_name(bytes(name_data), f"tensor #{index} of {declared} declared")
    if not name or not name.isprintable():
        raise ReadAbort(f"tensor #{index} of {declared} declared has an empty or unprintable name{hint}")
    type_id = int(raw_type[0])
    try:
        ggml_type = GGMLQuantizationType(type_id)
    except ValueError:
        raise ReadAbort(f"tensor {name!r} has unknown tensor type id {type_id}{hint}") from None
    try:
        qt = traits_for_ggml_type(type_id)
    except UnsupportedError:
        raise UnsupportedError(
            f"tensor {name!r} has type {ggml_type.name}, which qprof does not support; supported: {', '.join(ALL_TYPES)}"
        ) from None
    n_elements = 1
    for d in (int(x) for x in dims):
        if d >= 1 << 63:
            raise ReadAbort(f"tensor {name!r} has a negative dimension {d - (1 << 64)} in {[int(x) for x in dims]}")
        if d == 0 or d > MAX_ELEMENTS:
            raise ReadAbort(f"tensor {name!r} has an absurd dimension {d} in {[int(x) for x in dims]}")
        n_elements *= d
    if n_elements > MAX_ELEMENTS:
        raise ReadAbort(f"tensor {name!r} has an absurd size: {n_elements} elements ({[int(x) for x in dims]})")
    row = int(dims[0])
    if row % qt.block_values:
        raise ReadAbort(
            f"tensor {name!r} has rows of {row} values, not a multiple of {qt.name}'s block size {qt.block_values}"
        )


def plausible_tensor_info(buf, offset: int, alignment: int) -> str | None:
    """The name of a well-formed tensor info record at `offset`, else None (no exception).

    Used to see whether the header's tensor count stopped one record short: zero padding or
    tensor data almost never pass as a record with a printable name, 1..4 sane dims, a known type
    and an aligned offset.
    """
    from gguf import GGMLQuantizationType

    size = len(buf)
    if offset + 8 > size:
        return None
    (name_len,) = struct.unpack_from("<Q", buf, offset)
    if not 1 <= name_len < GGML_MAX_NAME or offset + 8 + name_len + 4 > size:
        return None
    try:
        name = bytes(buf[offset + 8 : offset + 8 + name_len]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    at = offset + 8 + name_len
    (n_dims,) = struct.unpack_from("<I", buf, at)
    if not (name.isprintable() and 1 <= n_dims <= GGML_MAX_DIMS) or at + 4 + 8 * n_dims + 12 > size:
        return None
    dims = struct.unpack_from(f"<{n_dims}Q", buf, at + 4)
    type_id, rel = struct.unpack_from("<IQ", buf, at + 4 + 8 * n_dims)
    if not all(1 <= d <= MAX_ELEMENTS for d in dims) or rel % alignment:
        return None
    try:
        GGMLQuantizationType(type_id)
    except ValueError:
        return None
    return name


def tensor_nbytes(field) -> int:
    qt = traits_for_ggml_type(int(field.parts[4][0]))
    n_elements = math.prod(int(x) for x in field.parts[3])
    return n_elements // qt.block_values * qt.block_bytes


def check_tensor_layout(fields, data_start: int, alignment: int, file_size: int) -> None:
    """Duplicate names, alignment, bounds and overlap of every tensor's data, before any is mapped."""
    spans: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for field in fields:
        name = tensor_name(field)
        if name in seen:
            raise ReadAbort(f"duplicate tensor name {name!r}")
        seen.add(name)
        rel = int(field.parts[5][0])
        nbytes = tensor_nbytes(field)
        if rel % alignment:
            raise ReadAbort(f"tensor {name!r} data offset {rel} is not a multiple of the alignment {alignment}")
        start = data_start + rel
        if start + nbytes > file_size:
            raise ReadAbort(
                f"tensor {name!r} data (offset {rel}, {nbytes} bytes) runs past the end of the file"
                f" ({file_size} bytes; data section starts at {data_start}): truncated or bad offset"
            )
        spans.append((start, start + nbytes, name))
    spans.sort()
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise ReadAbort(f"tensors {n0!r} and {n1!r} overlap in the file")
