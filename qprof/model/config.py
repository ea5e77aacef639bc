"""Model hyper-parameters read from GGUF metadata, as one dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SUPPORTED_ARCHITECTURES = ("llama", "mistral")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_theta: float
    rope_dim: int
    n_ctx: int
    sliding_window: int | None = None
    tied_embeddings: bool = False
    name: str = ""

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    def as_dict(self) -> dict:
        return asdict(self)
