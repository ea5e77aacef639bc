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


def field_value(field_obj) -> Any:
    """Decode a GGUFReader field into a Python scalar, string or list."""
    from gguf import GGUFValueType

    types = field_obj.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        item_type = types[1] if len(types) > 1 else None
        if item_type == GGUFValueType.STRING:
            return [bytes(field_obj.parts[i]).decode("utf-8", errors="replace") for i in field_obj.data]
        return [field_obj.parts[i].tolist()[0] for i in field_obj.data]
    if types[0] == GGUFValueType.STRING:
        return bytes(field_obj.parts[field_obj.data[0]]).decode("utf-8", errors="replace")
    return field_obj.parts[field_obj.data[0]].tolist()[0]


def read_metadata(reader) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for name, f in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field_value(f)
    return meta


def _require(meta: dict[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise MalformedModelError(f"{path.name}: missing required metadata key {key!r}")
    return meta[key]


def config_from_metadata(meta: dict[str, Any], path: Path, tensor_names: set[str]) -> ModelConfig:
    arch = _require(meta, "general.architecture", path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(
            f"{path.name}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    n_embd = int(_require(meta, f"{arch}.embedding_length", path))
    n_head = int(_require(meta, f"{arch}.attention.head_count", path))
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    head_dim = int(meta.get(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = int(meta.get(f"{arch}.vocab_size", len(tokens) if tokens else 0))
    window = meta.get(f"{arch}.attention.sliding_window")
    return ModelConfig(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=int(_require(meta, f"{arch}.block_count", path)),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=int(_require(meta, f"{arch}.feed_forward_length", path)),
        rms_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_dim=int(meta.get(f"{arch}.rope.dimension_count", head_dim)),
        n_ctx=int(_require(meta, f"{arch}.context_length", path)),
        sliding_window=int(window) if window else None,
        tied_embeddings="output.weight" not in tensor_names,
        name=str(meta.get("general.name", "")),
    )


def _tensor_info(t, path: Path) -> TensorInfo:
    qt = traits_for_ggml_type(int(t.tensor_type))
    ne = [int(x) for x in t.shape]  # ggml order: ne[0] is the contiguous row length
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


def load_model(path: str | Path) -> GGUFModel:
    """Open and validate a GGUF model; raises QprofError with a one-line message on any problem."""
    from qprof.model.validate import open_reader, validate_model

    path = Path(path)
    reader = open_reader(path)
    meta = read_metadata(reader)
    tensors = {t.name: _tensor_info(t, path) for t in reader.tensors}
    config = config_from_metadata(meta, path, set(tensors))
    model = GGUFModel(path=path, config=config, tensors=tensors, metadata=meta)
    validate_model(model)
    return model


__all__ = ["GGUFModel", "TensorInfo", "load_model", "QprofError"]
