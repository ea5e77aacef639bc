"""Open a GGUF with bounds checks at every read, so a truncated or lying file fails fast naming what to blame.

Reading stays with `gguf.GGUFReader`; a subclass replaces its metadata loop and its array reader:
the key being read is known while its value is parsed (so a bad value is blamed on its own key),
an array is read as one view (numbers) or one bounded walk (strings) instead of one numpy object
per item, and the walk stops as soon as the items left cannot fit in the bytes left. Before the
reader runs, the path must be a regular file (a FIFO would block `open` forever) and the fixed
24-byte header must be plausible. Everything here is O(metadata); no tensor data is touched.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

import numpy as np

from qprof.errors import MalformedModelError, QprofError, UnsupportedError
from qprof.model.tensor_infos import (
    GGML_MAX_DIMS,
    MIN_TENSOR_INFO_BYTES,
    ReadAbort,
    check_tensor_info,
    check_tensor_layout,
    count_hint,
    decode_name,
    plausible_tensor_info,
)

SUPPORTED_GGUF_VERSIONS = (2, 3)
HEADER_BYTES = 24  # magic u32, version u32, tensor_count u64, kv_count u64
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-char key, value type, 1-byte value
MAX_ARRAY_ITEMS = 1 << 22  # 16x the largest real vocabulary (262k); more means a corrupt array length
KEY_NAMESPACES = frozenset({"general", "tokenizer", "split", "quantize", "adapter"})  # besides the arch's own


def _checked_reader_class():
    """GGUFReader with bounds checks at its read points (built lazily: importing gguf is slowish)."""
    from gguf import GGUFReader, GGUFValueType

    scalar_np = {int(t): np.dtype(d) for t, d in GGUFReader.gguf_scalar_to_np.items()}
    value_types = frozenset(int(t) for t in GGUFValueType)
    ARRAY, STRING = int(GGUFValueType.ARRAY), int(GGUFValueType.STRING)
    u64 = struct.Struct("<Q")

    class CheckedReader(GGUFReader):
        def __init__(self, path: Path, tensor_count: int, kv_count: int):
            self._declared_tensors = tensor_count
            self._declared_keys = kv_count
            self._last_key: str | None = None  # the last key read completely
            self._current_key: str | None = None  # the key whose value is being read
            self._key_index = 0
            self._section = "header"
            self._tensor_index = 0
            super().__init__(path, "r")

        # --- read points -------------------------------------------------------------
        def _get(self, offset, dtype, count=1, override_order=None):
            # The reader's own read primitive, plus a bounds check, on a plain-ndarray view of the map:
            # slicing np.memmap runs Python-level hooks on every slice, which dominated load time.
            plain = self._plain_bytes()
            count = int(count)
            dtype = np.dtype(dtype)
            start = int(offset)
            end = start + dtype.itemsize * count
            if count < 0 or end > plain.size:
                raise ReadAbort(f"file is truncated in the {self._where()}: needs byte {end}, file has {plain.size}")
            arr = plain[start:end].view(dtype)
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _plain_bytes(self) -> np.ndarray:
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            return plain

        def _where(self) -> str:
            if self._section == "metadata":
                if self._current_key is not None:
                    return f"metadata (value of key {self._current_key!r})"
                return f"metadata (key #{self._key_index + 1} of {self._declared_keys}" + (
                    f", after key {self._last_key!r})" if self._last_key else ")")
            if self._section == "tensor infos":
                where = f"tensor infos (tensor #{self._tensor_index} of {self._declared_tensors} declared)"
                return where + count_hint(self._tensor_index, self._declared_tensors) + self._key_count_hint()
            return self._section

        def _key_count_hint(self) -> str:
            """The header's key count one too high makes the first tensor info read as a key named like a tensor."""
            if self._last_key and self._last_key.endswith((".weight", ".bias")):
                return (f"; metadata key {self._last_key!r} looks like a tensor name: the header's metadata key "
                        "count may exceed the keys present")
            return ""

        # --- metadata ----------------------------------------------------------------
        def _build_fields(self, offs, count):
            from gguf.gguf_reader import ReaderField

            self._section = "metadata"
            for index in range(int(count)):
                self._key_index = index
                orig_offs = offs
                key_len, key_data = self._get_str(offs)
                where = f"metadata key #{index + 1} of {count}" + (f" (after {self._last_key!r})"
                                                                   if self._last_key else "")
                key = decode_name(bytes(key_data), where)
                offs += int(key_len.nbytes + key_data.nbytes)
                self._current_key = key
                raw_type = self._get(offs, np.uint32)
                offs += int(raw_type.nbytes)
                size, parts, idxs, types = self._get_field_parts(offs, raw_type[0])
                self._push_field(ReaderField(orig_offs, key, [key_len, key_data, raw_type, *parts],
                                             [i + 3 for i in idxs], types), skip_sum=True)
                offs += size
                self._current_key = None
            return offs

        def _push_field(self, field, skip_sum=False):
            if field.name in self.fields:
                raise ReadAbort(f"duplicate metadata key {field.name!r}")
            if not field.name.startswith("GGUF."):
                self._last_key = field.name
            return super()._push_field(field, skip_sum)

        def _get_field_parts(self, orig_offs, raw_type):
            from gguf import GGUFValueType

            vtype = int(raw_type)
            if vtype not in value_types:
                raise ReadAbort(f"metadata key {self._current_key!r} has unknown value type {vtype}")
            if vtype == STRING:
                self._check_string(orig_offs, "string")
            if vtype != ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            length_part = self._get(orig_offs + 4, np.uint64)
            item_type, length, start = int(raw_itype[0]), int(length_part[0]), orig_offs + 12
            key = self._current_key
            if item_type == ARRAY:
                raise ReadAbort(f"metadata key {key!r} is an array of arrays; GGUF readers (llama.cpp's too) "
                                "take only arrays of numbers, booleans or strings")
            if item_type not in value_types:
                raise ReadAbort(f"metadata key {key!r} is an array of unknown value type {item_type}")
            min_item = 8 if item_type == STRING else scalar_np[item_type].itemsize
            if length * min_item > self._plain_bytes().size - start:
                raise ReadAbort(f"metadata key {key!r}: an array of {length} {GGUFValueType(item_type).name} items "
                                f"runs past the end of the file ({self._plain_bytes().size} bytes; at least "
                                f"{min_item} bytes per item)")
            if length > MAX_ARRAY_ITEMS:
                raise ReadAbort(f"metadata key {key!r} declares an array of {length} items, more than any model "
                                f"has ({MAX_ARRAY_ITEMS} at most): its length is corrupt")
            if item_type == STRING:
                end, payload = self._string_array(start, length)
            else:
                payload = self._get(start, scalar_np[item_type], length)
                end = start + length * min_item
            types = [GGUFValueType.ARRAY, GGUFValueType(item_type)]
            return end - orig_offs, [raw_itype, length_part, payload], [2], types

        def _check_string(self, offset: int, what: str) -> int:
            """The byte length of the string at `offset`, refused if it runs past the end of the file."""
            plain = self._plain_bytes()
            if offset + 8 > plain.size:
                raise ReadAbort(f"file is truncated in the {self._where()}: needs byte {offset + 8}, "
                                f"file has {plain.size}")
            (n,) = u64.unpack_from(plain, offset)
            if n > plain.size - offset - 8:
                raise ReadAbort(f"metadata key {self._current_key!r}: {what} length {n} at byte {offset} runs "
                                f"past the end of the file ({plain.size} bytes)")
            return n

        def _string_array(self, start: int, length: int) -> tuple[int, np.ndarray]:
            """Walk `length` strings from `start`, decoding each; stop once the rest cannot fit (8 bytes each)."""
            plain = self._plain_bytes()
            size, off = plain.size, start
            view = memoryview(plain)
            items = np.empty(length, dtype=object)
            for i in range(length):
                left = length - i
                if left * 8 > size - off:
                    raise ReadAbort(
                        f"metadata key {self._current_key!r}: {left} of its {length} strings are left at byte "
                        f"{off}, but the file has only {size - off} bytes after it (8 at least per string): "
                        "the array's length or an item's length is wrong")
                n = self._check_string(off, f"string #{i} of {length}, whose")
                items[i] = str(view[off + 8 : off + 8 + n], "utf-8", "replace")
                off += 8 + n
            return off, items

        # --- tensor infos ------------------------------------------------------------
        def _build_tensor_info(self, offs, count):
            self._section = "tensor infos"
            extra_key = self._key_at(offs)
            if extra_key is not None:
                raise ReadAbort(f"the header declares {self._declared_keys} metadata keys, but key {extra_key!r} "
                                "follows them: the header's metadata key count is too low")
            end, fields = super()._build_tensor_info(offs, count)
            extra = plausible_tensor_info(self._plain_bytes(), end, self._alignment())
            if extra is not None:
                raise ReadAbort(f"the header declares {self._declared_tensors} tensors, but a tensor info record "
                                f"({extra!r}) follows them: the header's tensor count is too low")
            return end, fields

        def _alignment(self) -> int:
            """general.alignment if the file sets a sane one (the reader itself checks it only later), else 32."""
            field = self.fields.get("general.alignment")
            value = int(field.parts[-1][0]) if field is not None and field.types == [GGUFValueType.UINT32] else 0
            return value if value > 0 and value & (value - 1) == 0 else int(self.alignment)

        def _key_at(self, offs: int) -> str | None:
            """A metadata key that starts at `offs`, judged by its namespace (a tensor name has none of these)."""
            plain = self._plain_bytes()
            if offs + 8 > plain.size:
                return None
            (n,) = u64.unpack_from(plain, offs)
            if not 1 <= n <= 256 or offs + 8 + n + 4 > plain.size:
                return None
            try:
                name = bytes(plain[offs + 8 : offs + 8 + n]).decode("utf-8")
            except UnicodeDecodeError:
                return None
            (vtype,) = struct.unpack_from("<I", plain, offs + 8 + n)
            namespaces = KEY_NAMESPACES | {k.split(".")[0] for k in self.fields if not k.startswith("GGUF.")}
            return name if vtype in value_types and name.split(".")[0] in namespaces else None

        def _get_tensor_info_field(self, orig_offs):
            self._tensor_index += 1
            label = f"tensor #{self._tensor_index} of {self._declared_tensors} declared"
            name_len = int(self._get(orig_offs, np.uint64)[0])
            decode_name(bytes(self._get(orig_offs + 8, np.uint8, name_len)), label)
            n_dims = int(self._get(orig_offs + 8 + name_len, np.uint32)[0])
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise ReadAbort(f"{label} has {n_dims} dimensions (GGUF allows 1..{GGML_MAX_DIMS})"
                                + count_hint(self._tensor_index, self._declared_tensors) + self._key_count_hint())
            field = super()._get_tensor_info_field(orig_offs)
            check_tensor_info(field, self._tensor_index, self._declared_tensors)
            return field

        def _build_tensors(self, start_offs, fields):
            self._section = "tensor data"
            # start_offs is a numpy uint32 when the file sets general.alignment: make it a Python int
            # before adding offsets past 4 GiB to it.
            check_tensor_layout(fields, int(start_offs), int(self.alignment), int(self.data.size))
            return super()._build_tensors(start_offs, fields)

    return CheckedReader


def field_value(field_obj) -> Any:
    """A CheckedReader field as a Python scalar, string or list (an array's items are one part)."""
    from gguf import GGUFValueType

    types = field_obj.types
    if not types:
        return None
    part = field_obj.parts[field_obj.data[0]]
    if types[0] == GGUFValueType.ARRAY:
        return part.tolist()
    if types[0] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    return part.tolist()[0]


def check_header(path: Path) -> tuple[int, int]:
    """Magic, version and plausible counts from the fixed 24-byte header; returns (tensor count, key count)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    if size == 0:
        raise MalformedModelError(f"{path.name}: file is empty (0 bytes), not a GGUF model")
    if head[:4] != b"GGUF":
        raise MalformedModelError(f"{path.name}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    if size < HEADER_BYTES:
        raise MalformedModelError(
            f"{path.name}: file is truncated in the header ({size} bytes, a GGUF header needs {HEADER_BYTES})"
        )
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", head, 4)
    if version not in SUPPORTED_GGUF_VERSIONS:
        swapped = struct.unpack(">I", head[4:8])[0]
        if swapped in SUPPORTED_GGUF_VERSIONS:
            raise UnsupportedError(f"{path.name}: big-endian GGUF files are not supported")
        raise UnsupportedError(
            f"{path.name}: unsupported GGUF version {version} (supported: "
            f"{', '.join(map(str, SUPPORTED_GGUF_VERSIONS))})"
        )
    room = size - HEADER_BYTES
    if kv_count * MIN_KV_BYTES > room:
        raise MalformedModelError(
            f"{path.name}: header declares {kv_count} metadata keys, more than {size} bytes can hold"
            " (file truncated or header corrupt)"
        )
    if tensor_count * MIN_TENSOR_INFO_BYTES > room:
        raise MalformedModelError(
            f"{path.name}: header declares {tensor_count} tensors, more than {size} bytes can hold"
            " (file truncated or header corrupt)"
        )
    return int(tensor_count), int(kv_count)


def check_model_path(path: Path) -> None:
    """Exists, and is a regular file: a directory, FIFO, socket or device is refused before any open()."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise QprofError(f"model file not found: {path}") from None
    except OSError as exc:
        raise QprofError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise QprofError(f"model path is a directory, not a GGUF file: {path}")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise QprofError(f"model path is {kind}, not a GGUF file: {path}")


def open_reader(path: Path):
    """Open with the checked GGUFReader, mapping every low-level failure to a one-line error."""
    check_model_path(path)
    tensor_count, kv_count = check_header(path)
    reader_cls = _checked_reader_class()
    try:
        return reader_cls(path, tensor_count, kv_count)
    except ReadAbort as exc:
        raise MalformedModelError(f"{path.name}: {exc}") from None
    except QprofError as exc:
        raise type(exc)(f"{path.name}: {exc}") from None
    except RecursionError:
        raise MalformedModelError(f"{path.name}: cannot read GGUF: structure nested too deep") from None
    except Exception as exc:  # noqa: BLE001 -- the reader raises many types; all mean a malformed file
        msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).splitlines()
        raise MalformedModelError(
            f"{path.name}: cannot read GGUF: {msg[0] if msg else type(exc).__name__}"
        ) from None
