"""Open a GGUF file: metadata, config and a map of tensors with their quant types.

Reading is delegated to the `gguf` package; this module turns what it finds into a
ModelConfig and TensorInfo records, and every problem into a one-line QprofError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qprof.errors import MalformedModelError, QprofError, UnsupportedError
from qprof.model.config import SUPPORTED_ARCHITECTURES, ModelConfig
from qprof.quant.traits import QuantTraits, traits_for_ggml_type


@dataclass
class TensorInfo:
    """One tensor. `shape` is torch order (rows, cols); rows are contiguous runs of blocks."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    raw: np.ndarray = field(repr=False)  # uint8 view of the stored bytes, shape (rows, row_bytes)

    @property
    def traits(self) -> QuantTraits:
        from qprof.quant.traits import traits

        return traits(self.qtype)

    @property
    def n_bytes(self) -> int:
        return int(self.raw.nbytes)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class GGUFModel:
    path: Path
    config: ModelConfig
    tensors: dict[str, TensorInfo]
    metadata: dict[str, Any]
    # GGUF value types of each metadata key (GGUFValueType ints: the type, then the item type for arrays),
    # so a writer can copy keys with the exact types llama.cpp checks.
    metadata_types: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise MalformedModelError(f"{self.path.name}: missing tensor {name!r}") from None

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    @property
    def size_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.qtype] = counts.get(t.qtype, 0) + 1
        return counts

    def describe_type(self) -> str:
        """llama-bench style 'llama 7B Q4_K - Medium'-like label from the most common matrix type."""
        ftype = self.metadata.get("general.file_type")
        mats = [t.qtype for n, t in self.tensors.items() if len(t.shape) == 2 and "token_embd" not in n]
        common = max(set(mats), key=mats.count) if mats else "F32"
        label = self.metadata.get("general.name") or self.config.arch
        return f"{label} {common}" + (f" (ftype {ftype})" if ftype is not None else "")


def read_metadata(reader) -> dict[str, Any]:
    from qprof.model.gguf_reader import field_value

    meta: dict[str, Any] = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field_value(f)
    return meta


def read_metadata_types(reader) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(t) for t in f.types) for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def _require(meta: dict[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise MalformedModelError(f"{path.name}: missing required metadata key {key!r}")
    return meta[key]


def _int_value(meta: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    """An integer metadata value (required when default is None), refusing strings, floats and bools."""
    value = _require(meta, key, path) if default is None else meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedModelError(
            f"{path.name}: metadata key {key!r} must be an integer, got {type(value).__name__} {value!r:.40}"
        )
    return value


def _float_value(meta: dict[str, Any], key: str, path: Path, default: float) -> float:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedModelError(
            f"{path.name}: metadata key {key!r} must be a number, got {type(value).__name__} {value!r:.40}"
        )
    return float(value)


def config_from_metadata(meta: dict[str, Any], path: Path, tensor_names: set[str]) -> ModelConfig:
    arch = _require(meta, "general.architecture", path)
    if not isinstance(arch, str):
        raise MalformedModelError(f"{path.name}: general.architecture must be a string, got {type(arch).__name__}")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(
            f"{path.name}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    n_embd = _int_value(meta, f"{arch}.embedding_length", path)
    n_head = _int_value(meta, f"{arch}.attention.head_count", path)
    n_head_kv = _int_value(meta, f"{arch}.attention.head_count_kv", path, default=n_head)
    if f"{arch}.attention.key_length" not in meta and n_head > 0 and n_embd % n_head:
        # the head size is n_embd / n_head unless key_length says otherwise; a remainder is a corrupt count
        raise MalformedModelError(
            f"{path.name}: {arch}.embedding_length {n_embd} is not a multiple of {arch}.attention.head_count "
            f"{n_head}, and no {arch}.attention.key_length gives the head size"
        )
    head_dim = _int_value(meta, f"{arch}.attention.key_length", path, default=n_embd // max(n_head, 1))
    tokens = meta.get("tokenizer.ggml.tokens")  # type-checked by check_tokenizer_metadata
    n_vocab = _int_value(meta, f"{arch}.vocab_size", path, default=len(tokens) if tokens else 0)
    window = _int_value(meta, f"{arch}.attention.sliding_window", path, default=0)
    return ModelConfig(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=_int_value(meta, f"{arch}.block_count", path),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=_int_value(meta, f"{arch}.feed_forward_length", path),
        rms_eps=_float_value(meta, f"{arch}.attention.layer_norm_rms_epsilon", path, 1e-5),
        rope_theta=_float_value(meta, f"{arch}.rope.freq_base", path, 10000.0),
        rope_dim=_int_value(meta, f"{arch}.rope.dimension_count", path, default=head_dim),
        n_ctx=_int_value(meta, f"{arch}.context_length", path),
        sliding_window=window or None,
        tied_embeddings="output.weight" not in tensor_names,
        name=str(meta.get("general.name", "")),
    )


def _tensor_info(t, path: Path) -> TensorInfo:
    qt = traits_for_ggml_type(int(t.tensor_type))
    ne = [int(x) for x in t.shape]  # ggml order: ne[0] is the contiguous row length
    while len(ne) > 1 and ne[-1] == 1:  # [n, 1] is [n]: llama.cpp pads every shape with 1s before comparing
        ne.pop()
    shape = tuple(reversed(ne))
    raw = np.asarray(t.data)
    raw = raw.view(np.uint8).reshape(-1)
    n_rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    expect = n_rows * qt.row_bytes(ne[0]) if qt.block_values > 1 else n_rows * ne[0] * qt.block_bytes
    if raw.size != expect:
        raise MalformedModelError(
            f"{path.name}: tensor {t.name!r} has {raw.size} bytes, {qt.name} {list(shape)} needs {expect}"
        )
    return TensorInfo(name=t.name, qtype=qt.name, shape=shape, raw=raw.reshape(n_rows, -1))


def load_model(path: str | Path, *, check_values: bool = True) -> GGUFModel:
    """Open and validate a GGUF model; raises QprofError with a one-line message on any problem.

    check_values scans every fp16 block scale and float tensor for NaN/inf (vectorized; it touches
    every page of the file once). Turn it off only where the caller has just written the file.
    """
    from qprof.model.gguf_reader import open_reader
    from qprof.model.tokenizer_keys import check_tokenizer_metadata
    from qprof.model.validate import validate_model

    path = Path(path)
    reader = open_reader(path)
    meta = read_metadata(reader)
    check_tokenizer_metadata(meta, path.name)  # `workloads info` and generate refuse the same files
    tensors = {t.name: _tensor_info(t, path) for t in reader.tensors}
    config = config_from_metadata(meta, path, set(tensors))
    model = GGUFModel(
        path=path, config=config, tensors=tensors, metadata=meta, metadata_types=read_metadata_types(reader)
    )
    validate_model(model, check_values=check_values)
    return model


__all__ = ["GGUFModel", "QprofError", "TensorInfo", "load_model"]
