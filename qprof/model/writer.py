"""Write llama-family GGUF files (config, tokenizer, quantized tensors) with gguf.GGUFWriter, atomically.

Tensors stream one at a time, so a 4 GB model never sits in memory whole: a tensor's data may be a
zero-argument callable that produces it when its turn comes. The file appears under its final name
only once complete (written to a temporary name in the same folder, then renamed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qprof.errors import QprofError
from qprof.model.config import ModelConfig
from qprof.quant.traits import QUANT_TRAITS, traits

QUANTIZATION_VERSION = 2  # ggml's current quant block format version (general.quantization_version)
DEFAULT_ALIGNMENT = 32

# llama.cpp's llama_ftype for a file that is "mostly" one type; pure K-quant files map to the _S variant,
# whose rule is closest to all-one-type.
FILE_TYPE_BY_QTYPE = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18, "BF16": 32,
}  # fmt: skip

ArrayLike = np.ndarray | Callable[[], np.ndarray]


@dataclass
class TensorSource:
    """One tensor to write: type, torch-order shape, and its data (or a callable that makes it).

    Data is either raw bytes (uint8, rows x row_bytes or any shape holding exactly those bytes) or,
    for F32/F16/BF16, a float array of `shape`; quantized types given float data are quantized here.
    """

    qtype: str
    shape: tuple[int, ...]
    data: ArrayLike

    @property
    def n_bytes(self) -> int:
        t = traits(self.qtype)
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        return rows * t.row_bytes(self.shape[-1])

    def materialize(self) -> np.ndarray:
        """The tensor's bytes as a flat uint8 array, checked against type and shape."""
        data = self.data() if callable(self.data) else self.data
        data = np.asarray(data)
        if data.dtype != np.uint8:
            data = encode_values(self.qtype, data.reshape(self.shape))
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if flat.size != self.n_bytes:
            raise QprofError(
                f"tensor data of {flat.size} bytes does not match {self.qtype} {list(self.shape)} ({self.n_bytes} bytes)"
            )
        return flat


def encode_values(qtype: str, values: np.ndarray) -> np.ndarray:
    """Float values -> stored bytes of qtype: float types converted, quantized types quantized (helper A's code)."""
    from qprof.quant.quantize import quantize

    rows = values.reshape(-1, values.shape[-1])
    return quantize(rows.astype(np.float32, copy=False), qtype)


def source_from(value: TensorSource | tuple[str, ArrayLike]) -> TensorSource:
    """Accept a TensorSource or the short form (qtype, array) and infer the shape from the array."""
    if isinstance(value, TensorSource):
        return value
    qtype, data = value
    if callable(data):
        raise QprofError("a lazily produced tensor needs TensorSource(qtype, shape, fn) so its shape is known")
    data = np.asarray(data)
    t = traits(qtype)
    if data.dtype == np.uint8:
        if data.ndim < 2 or data.shape[-1] % t.block_bytes:
            raise QprofError(f"raw {qtype} data must be (rows, row_bytes) with whole blocks, got {data.shape}")
        shape = (*data.shape[:-1], data.shape[-1] // t.block_bytes * t.block_values)
    else:
        shape = tuple(data.shape)
    return TensorSource(t.name, tuple(int(x) for x in shape), data)


# Tokenizer and general keys whose GGUF types llama.cpp checks strictly; others are inferred.
def _known_key_types():
    from gguf import GGUFValueType as V

    return {
        "tokenizer.ggml.model": (V.STRING,),
        "tokenizer.ggml.pre": (V.STRING,),
        "tokenizer.ggml.tokens": (V.ARRAY, V.STRING),
        "tokenizer.ggml.scores": (V.ARRAY, V.FLOAT32),
        "tokenizer.ggml.token_type": (V.ARRAY, V.INT32),
        "tokenizer.ggml.merges": (V.ARRAY, V.STRING),
        "tokenizer.ggml.bos_token_id": (V.UINT32,),
        "tokenizer.ggml.eos_token_id": (V.UINT32,),
        "tokenizer.ggml.unknown_token_id": (V.UINT32,),
        "tokenizer.ggml.padding_token_id": (V.UINT32,),
        "tokenizer.ggml.seperator_token_id": (V.UINT32,),
        "tokenizer.ggml.add_bos_token": (V.BOOL,),
        "tokenizer.ggml.add_eos_token": (V.BOOL,),
        "tokenizer.ggml.add_space_prefix": (V.BOOL,),
        "tokenizer.chat_template": (V.STRING,),
        "general.name": (V.STRING,),
        "general.file_type": (V.UINT32,),
        "general.quantization_version": (V.UINT32,),
    }


def _infer_types(value: Any) -> tuple[int, ...]:
    from gguf import GGUFValueType as V

    if isinstance(value, bool):
        return (V.BOOL,)
    if isinstance(value, int):
        return (V.UINT32,) if 0 <= value < 1 << 32 else (V.INT64,)
    if isinstance(value, float):
        return (V.FLOAT32,)
    if isinstance(value, str):
        return (V.STRING,)
    if isinstance(value, (list, tuple)) and value:
        return (V.ARRAY, *_infer_types(value[0]))
    raise QprofError(f"cannot store metadata value {value!r:.40} in GGUF")


def _add_value(writer, key: str, value: Any, types: tuple[int, ...]) -> None:
    from gguf import GGUFValueType as V

    vtype = V(types[0])
    if vtype == V.ARRAY:
        if len(value) == 0:
            return  # GGUF cannot express an empty array; llama.cpp treats a missing key the same
        writer.add_key_value(key, list(value), vtype, sub_type=V(types[1]))
    else:
        writer.add_key_value(key, value, vtype)


def config_metadata(config: ModelConfig) -> dict[str, Any]:
    """The `<arch>.*` keys llama.cpp reads for a llama-family model."""
    a = config.arch
    meta: dict[str, Any] = {
        f"{a}.context_length": config.n_ctx,
        f"{a}.embedding_length": config.n_embd,
        f"{a}.block_count": config.n_layer,
        f"{a}.feed_forward_length": config.n_ff,
        f"{a}.attention.head_count": config.n_head,
        f"{a}.attention.head_count_kv": config.n_head_kv,
        f"{a}.attention.layer_norm_rms_epsilon": float(config.rms_eps),
        f"{a}.rope.freq_base": float(config.rope_theta),
        f"{a}.rope.dimension_count": config.rope_dim,
        f"{a}.vocab_size": config.n_vocab,
    }
    if config.head_dim * config.n_head != config.n_embd:
        meta[f"{a}.attention.key_length"] = config.head_dim
        meta[f"{a}.attention.value_length"] = config.head_dim
    if config.sliding_window:
        meta[f"{a}.attention.sliding_window"] = config.sliding_window
    return meta


def guess_file_type(sources: Iterable[TensorSource]) -> int:
    """llama_ftype of the most common type among matrices (what llama.cpp prints as the model type)."""
    counts: dict[str, int] = {}
    for s in sources:
        if len(s.shape) == 2:
            counts[s.qtype] = counts.get(s.qtype, 0) + int(np.prod(s.shape))
    common = max(counts, key=counts.__getitem__) if counts else "F32"
    return FILE_TYPE_BY_QTYPE[common]


def _materialize(path: Path, name: str, src: TensorSource) -> np.ndarray:
    try:
        return src.materialize()
    except QprofError as exc:
        raise QprofError(f"{path.name}: tensor {name!r}: {exc}") from None


def _write_tensor_data(writer, path: Path, sources: Mapping[str, TensorSource],
                       progress: Callable[[int, int], None] | None = None) -> None:
    """Write tensors in order, producing the next one on a worker thread while this one goes to disk.

    Generation (numpy, GIL released on large arrays) and file writes overlap, which roughly halves the
    time of a multi-GB synthetic model; at most two tensors are in memory at once.
    """
    items = list(sources.items())
    if not items:
        return
    total, done = sum(src.n_bytes for _, src in items), 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_materialize, path, *items[0])
        for i in range(len(items)):
            data = pending.result()
            if i + 1 < len(items):
                pending = pool.submit(_materialize, path, *items[i + 1])
            writer.write_tensor_data(data)
            done += items[i][1].n_bytes
            del data
            if progress is not None:
                progress(done, total)


def write_model(
    path: str | Path,
    config: ModelConfig,
    tensors: Mapping[str, TensorSource | tuple[str, ArrayLike]],
    tokenizer: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    metadata_types: Mapping[str, tuple[int, ...]] | None = None,
    file_type: int | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a GGUF that llama.cpp accepts; returns the path. The file appears only when complete.

    tokenizer: `tokenizer.*` keys; metadata: any further keys (general.*, ...). A key's GGUF type
    comes from metadata_types, else llama.cpp's expected type, else is inferred from the value.
    progress(bytes written, bytes in all) is called after each tensor's data is written.
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    path = Path(path)
    sources = {name: source_from(v) for name, v in tensors.items()}
    known = _known_key_types()
    given_types = dict(metadata_types or {})
    values: dict[str, Any] = {"general.name": config.name or f"qprof synthetic {config.arch}"}
    values.update(config_metadata(config))
    values["general.file_type"] = guess_file_type(sources.values()) if file_type is None else file_type
    values["general.quantization_version"] = QUANTIZATION_VERSION
    values.update(tokenizer)
    values.update(metadata or {})
    values.pop("general.architecture", None)  # the writer adds it from the architecture argument
    values.pop("general.alignment", None)  # set through add_custom_alignment below

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(tmp, config.arch)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer.add_custom_alignment(alignment)
        for key, value in values.items():
            _add_value(writer, key, value, given_types.get(key) or known.get(key) or _infer_types(value))
        for name, src in sources.items():
            qt = QUANT_TRAITS[src.qtype]
            lead = src.shape[:-1]
            byte_shape = (*lead, qt.row_bytes(src.shape[-1]))
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), src.n_bytes, GGMLQuantizationType(qt.ggml_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensor_data(writer, path, sources, progress)
        writer.close()
        os.replace(tmp, path)
    except OSError as exc:
        raise QprofError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # nothing to clean when the folder itself was unusable
            tmp.unlink(missing_ok=True)
    return path
