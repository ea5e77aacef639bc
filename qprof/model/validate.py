"""Checks that turn a malformed GGUF into one clear line instead of a traceback, a hang or garbage.

Reading stays with `gguf.GGUFReader`; a subclass only adds bounds checks at its read points so a
truncated or lying file fails fast with the section, key or tensor named. Everything here is
O(metadata) except the scan of fp16 block scales and float tensors, which is vectorized.
"""

from __future__ import annotations

import itertools
import math
import struct
from pathlib import Path

import numpy as np

from qprof.errors import MalformedModelError, QprofError, UnsupportedError
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.traits import ALL_TYPES, QUANT_TRAITS, traits_for_ggml_type

SUPPORTED_GGUF_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4
HEADER_BYTES = 24  # magic u32, version u32, tensor_count u64, kv_count u64
# Smallest possible encodings, used to reject header counts the file cannot possibly hold.
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-char key, value type, 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, name, n_dims, one dim, type, offset
MAX_ELEMENTS = 1 << 40  # no tensor of a model qprof runs comes near this; larger means a corrupt dim

# Exponent-all-ones masks: a value is NaN or inf exactly when (bits & mask) == mask.
_NONFINITE_MASK = {"F32": (np.uint32, 0x7F800000), "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}


class _Abort(Exception):
    """Internal: carries a finished one-line message out of the reader's constructor."""


def _checked_reader_class():
    """GGUFReader with bounds checks at its read points (built lazily: importing gguf is slowish)."""
    from gguf import GGUFReader, GGUFValueType

    scalar_sizes = {int(t): np.dtype(d).itemsize for t, d in GGUFReader.gguf_scalar_to_np.items()}
    value_types = frozenset(int(t) for t in GGUFValueType)
    array_type = int(GGUFValueType.ARRAY)

    class CheckedReader(GGUFReader):
        def __init__(self, path: Path, tensor_count: int):
            self._declared_tensors = tensor_count
            self._last_key: str | None = None
            self._section = "header"
            self._tensor_index = 0
            super().__init__(path, "r")

        # --- read points -------------------------------------------------------------
        def _get(self, offset, dtype, count=1, override_order=None):
            # The reader's own read primitive, plus a bounds check, on a plain-ndarray view of the map:
            # slicing np.memmap runs Python-level hooks on every slice, which dominated load time.
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            dtype = np.dtype(dtype)
            start = int(offset)
            end = start + dtype.itemsize * count
            if count < 0 or end > plain.size:
                raise _Abort(f"file is truncated in the {self._where()}: needs byte {end}, file has {plain.size}")
            arr = plain[start:end].view(dtype)
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _where(self) -> str:
            if self._section == "metadata":
                return "metadata" + (f" (after key {self._last_key!r})" if self._last_key else " (first key)")
            if self._section == "tensor infos":
                where = f"tensor infos (tensor #{self._tensor_index} of {self._declared_tensors} declared)"
                return where + _count_hint(self._tensor_index, self._declared_tensors)
            return self._section

        def _build_fields(self, offs, count):
            self._section = "metadata"
            return super()._build_fields(offs, count)

        def _push_field(self, field, skip_sum=False):
            if field.name in self.fields:
                raise _Abort(f"duplicate metadata key {field.name!r}")
            if not field.name.startswith("GGUF."):
                self._last_key = field.name
            return super()._push_field(field, skip_sum)

        def _get_field_parts(self, orig_offs, raw_type):
            vtype = int(raw_type)  # called once per array item: plain ints, no enum construction
            if vtype not in value_types:
                raise _Abort(f"unknown metadata value type {vtype} in the {self._where()}")
            if vtype == array_type:
                # The reader walks arrays item by item; refuse lengths the file cannot hold before that loop.
                item_type = int(self._get(orig_offs, np.uint32)[0])
                length = int(self._get(orig_offs + 4, np.uint64)[0])
                min_item = scalar_sizes.get(item_type, 8 if item_type == GGUFValueType.STRING else 12)
                if length * min_item > self.data.size - orig_offs:
                    raise _Abort(
                        f"metadata array of {length} items runs past the end of the file in the {self._where()}"
                    )
            return super()._get_field_parts(orig_offs, raw_type)

        def _build_tensor_info(self, offs, count):
            self._section = "tensor infos"
            return super()._build_tensor_info(offs, count)

        def _get_tensor_info_field(self, orig_offs):
            self._tensor_index += 1
            n_dims_at = orig_offs + 8 + int(self._get(orig_offs, np.uint64)[0])
            n_dims = int(self._get(n_dims_at, np.uint32)[0])
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise _Abort(
                    f"tensor #{self._tensor_index} of {self._declared_tensors} declared has {n_dims} dimensions"
                    f" (GGUF allows 1..{GGML_MAX_DIMS})" + _count_hint(self._tensor_index, self._declared_tensors)
                )
            field = super()._get_tensor_info_field(orig_offs)
            _check_tensor_info(field, self._tensor_index, self._declared_tensors)
            return field

        def _build_tensors(self, start_offs, fields):
            self._section = "tensor data"
            # start_offs is a numpy uint32 when the file sets general.alignment: make it a Python int
            # before adding offsets past 4 GiB to it.
            _check_tensor_layout(fields, int(start_offs), int(self.alignment), int(self.data.size))
            return super()._build_tensors(start_offs, fields)

    return CheckedReader


def _count_hint(index: int, declared: int) -> str:
    """A bad last record usually means the header claims more tensors than the file holds."""
    return "; the header's tensor count may exceed the tensors present" if index == declared else ""


def _tensor_name(field) -> str:
    try:
        return bytes(field.parts[1]).decode("utf-8")
    except UnicodeDecodeError:
        return repr(bytes(field.parts[1])[:40])


def _check_tensor_info(field, index: int, declared: int) -> None:
    """Name, dims and type of one tensor info record; a bad one usually means a lying tensor count."""
    from gguf import GGMLQuantizationType

    _len, name_data, _n_dims, dims, raw_type, _offset = field.parts
    hint = _count_hint(index, declared)
    try:
        name = bytes(name_data).decode("utf-8")
    except UnicodeDecodeError:
        raise _Abort(f"tensor #{index} of {declared} declared has a name that is not UTF-8{hint}") from None
    if not name or not name.isprintable():
        raise _Abort(f"tensor #{index} of {declared} declared has an empty or unprintable name{hint}")
    type_id = int(raw_type[0])
    try:
        ggml_type = GGMLQuantizationType(type_id)
    except ValueError:
        raise _Abort(f"tensor {name!r} has unknown tensor type id {type_id}{hint}") from None
    try:
        qt = traits_for_ggml_type(type_id)
    except UnsupportedError:
        raise UnsupportedError(
            f"tensor {name!r} has type {ggml_type.name}, which qprof does not support; supported: {', '.join(ALL_TYPES)}"
        ) from None
    n_elements = 1
    for d in (int(x) for x in dims):
        if d >= 1 << 63:
            raise _Abort(f"tensor {name!r} has a negative dimension {d - (1 << 64)} in {[int(x) for x in dims]}")
        if d == 0 or d > MAX_ELEMENTS:
            raise _Abort(f"tensor {name!r} has an absurd dimension {d} in {[int(x) for x in dims]}")
        n_elements *= d
    if n_elements > MAX_ELEMENTS:
        raise _Abort(f"tensor {name!r} has an absurd size: {n_elements} elements ({[int(x) for x in dims]})")
    row = int(dims[0])
    if row % qt.block_values:
        raise _Abort(
            f"tensor {name!r} has rows of {row} values, not a multiple of {qt.name}'s block size {qt.block_values}"
        )


def _tensor_nbytes(field) -> int:
    qt = traits_for_ggml_type(int(field.parts[4][0]))
    n_elements = math.prod(int(x) for x in field.parts[3])
    return n_elements // qt.block_values * qt.block_bytes


def _check_tensor_layout(fields, data_start: int, alignment: int, file_size: int) -> None:
    """Duplicate names, alignment, bounds and overlap of every tensor's data, before any is mapped."""
    spans: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for field in fields:
        name = _tensor_name(field)
        if name in seen:
            raise _Abort(f"duplicate tensor name {name!r}")
        seen.add(name)
        rel = int(field.parts[5][0])
        nbytes = _tensor_nbytes(field)
        if rel % alignment:
            raise _Abort(f"tensor {name!r} data offset {rel} is not a multiple of the alignment {alignment}")
        start = data_start + rel
        if start + nbytes > file_size:
            raise _Abort(
                f"tensor {name!r} data (offset {rel}, {nbytes} bytes) runs past the end of the file"
                f" ({file_size} bytes; data section starts at {data_start}): truncated or bad offset"
            )
        spans.append((start, start + nbytes, name))
    spans.sort()
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise _Abort(f"tensors {n0!r} and {n1!r} overlap in the file")


def _check_header(path: Path) -> int:
    """Magic, version and plausible counts from the fixed 24-byte header; returns the tensor count."""
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
    return int(tensor_count)


def open_reader(path: Path):
    """Open with gguf.GGUFReader, mapping every low-level failure to a one-line error."""
    if not path.exists():
        raise QprofError(f"model file not found: {path}")
    if path.is_dir():
        raise QprofError(f"model path is a directory, not a GGUF file: {path}")
    tensor_count = _check_header(path)
    reader_cls = _checked_reader_class()
    try:
        return reader_cls(path, tensor_count)
    except _Abort as exc:
        raise MalformedModelError(f"{path.name}: {exc}") from None
    except QprofError as exc:
        raise type(exc)(f"{path.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- the reader raises many types; all mean a malformed file
        msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).splitlines()
        raise MalformedModelError(
            f"{path.name}: cannot read GGUF: {msg[0] if msg else type(exc).__name__}"
        ) from None


# --- model-level checks ---------------------------------------------------------------------------


def expected_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Torch-order shapes of every tensor a llama/mistral model must have."""
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (cfg.n_vocab, cfg.n_embd),
        "output_norm.weight": (cfg.n_embd,),
    }
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (cfg.n_vocab, cfg.n_embd)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (cfg.n_embd,),
                p + "attn_q.weight": (cfg.q_dim, cfg.n_embd),
                p + "attn_k.weight": (cfg.kv_dim, cfg.n_embd),
                p + "attn_v.weight": (cfg.kv_dim, cfg.n_embd),
                p + "attn_output.weight": (cfg.n_embd, cfg.q_dim),
                p + "ffn_norm.weight": (cfg.n_embd,),
                p + "ffn_gate.weight": (cfg.n_ff, cfg.n_embd),
                p + "ffn_up.weight": (cfg.n_ff, cfg.n_embd),
                p + "ffn_down.weight": (cfg.n_embd, cfg.n_ff),
            }
        )
    return shapes


# Upper bounds far above any real llama-family model; a value beyond them is a corrupt field.
_CONFIG_LIMITS = {
    "n_embd": 1 << 17,
    "n_layer": 4096,
    "n_head": 4096,
    "n_head_kv": 4096,
    "head_dim": 1 << 12,
    "n_ff": 1 << 20,
    "n_ctx": 1 << 24,
    "n_vocab": 1 << 24,
    "rope_dim": 1 << 12,
}


def _check_config(cfg, name: str) -> None:
    for key, limit in _CONFIG_LIMITS.items():
        value = getattr(cfg, key)
        if key == "n_vocab" and value == 0:
            raise MalformedModelError(f"{name}: vocabulary size is 0 (no tokenizer.ggml.tokens and no vocab_size)")
        if not 1 <= value <= limit:
            raise MalformedModelError(f"{name}: config {key} = {value} is out of range (1..{limit})")
    if cfg.n_head % cfg.n_head_kv:
        raise MalformedModelError(
            f"{name}: head_count {cfg.n_head} is not a multiple of head_count_kv {cfg.n_head_kv}"
        )
    if cfg.rope_dim > cfg.head_dim or cfg.rope_dim % 2:
        raise MalformedModelError(f"{name}: rope dimension {cfg.rope_dim} does not fit head dim {cfg.head_dim}")
    for key in ("rms_eps", "rope_theta"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value > 0):
            raise MalformedModelError(f"{name}: config {key} = {value} must be finite and positive")
    if cfg.sliding_window is not None and cfg.sliding_window < 1:
        raise MalformedModelError(f"{name}: sliding window {cfg.sliding_window} must be positive")


def first_nonfinite_scale(qtype: str, raw: np.ndarray) -> tuple[int, str, float] | None:
    """(block index, field name, value) of the first NaN/inf fp16 scale in raw quant data, else None."""
    offsets = FP16_FIELDS.get(qtype)
    if not offsets or raw.size == 0:
        return None
    blocks = raw.reshape(-1, QUANT_TRAITS[qtype].block_bytes)
    worst: tuple[int, str, float] | None = None
    # ggml calls the first field d (the scale) and the second m (legacy) or dmin (K-quants).
    names = ("d", "dmin" if QUANT_TRAITS[qtype].family == "kquant" else "m")
    for field_name, offset in zip(names, offsets):
        bits = blocks[:, offset : offset + 2].view(np.uint16)[:, 0]
        bad = np.flatnonzero((bits & 0x7C00) == 0x7C00)
        if bad.size and (worst is None or bad[0] < worst[0]):
            value = float(bits[bad[0] : bad[0] + 1].view(np.float16)[0])
            worst = (int(bad[0]), field_name, value)
    return worst


def first_nonfinite_value(qtype: str, raw: np.ndarray) -> int | None:
    """Flat index of the first NaN/inf in a float tensor's raw bytes, else None."""
    dtype, mask = _NONFINITE_MASK[qtype]
    bits = raw.reshape(-1).view(dtype)
    bad = np.flatnonzero((bits & mask) == mask)
    return int(bad[0]) if bad.size else None


def check_tensor_values(tname: str, qtype: str, shape: tuple[int, ...], raw: np.ndarray, file: str) -> None:
    """Raise naming the tensor and block if any fp16 scale or float value is NaN/inf."""
    if qtype in _NONFINITE_MASK:
        idx = first_nonfinite_value(qtype, raw)
        if idx is not None:
            raise MalformedModelError(f"{file}: tensor {tname!r} ({qtype}) has a NaN/inf value at flat index {idx}")
        return
    hit = first_nonfinite_scale(qtype, raw)
    if hit is not None:
        block, field_name, value = hit
        per_row = shape[-1] // QUANT_TRAITS[qtype].block_values
        raise MalformedModelError(
            f"{file}: tensor {tname!r} ({qtype}) block {block} (row {block // per_row}) has a non-finite"
            f" fp16 scale {field_name} = {value}"
        )


def validate_model(model, check_values: bool = True) -> None:
    """Config ranges, tensor presence/shape/type, then (optionally) the NaN/inf scan of every tensor."""
    cfg = model.config
    name = model.path.name
    _check_config(cfg, name)
    expected = expected_shapes(cfg)
    for tname, shape in expected.items():
        t = model.tensors.get(tname)
        if t is None:
            raise MalformedModelError(f"{name}: missing tensor {tname!r}")
        if tuple(t.shape) != shape:
            raise MalformedModelError(
                f"{name}: tensor {tname!r} has shape {list(t.shape)}, config implies {list(shape)}"
            )
        if len(shape) == 1 and t.qtype not in _NONFINITE_MASK:
            raise MalformedModelError(f"{name}: norm tensor {tname!r} is {t.qtype}; it must be F32, F16 or BF16")
    if check_values:
        for tname, t in model.tensors.items():
            check_tensor_values(tname, t.qtype, t.shape, t.raw, name)

