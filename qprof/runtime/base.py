"""What every runtime (CPU reference, CUDA) offers to generation, bench and profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from qprof.model.config import ModelConfig


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Runtime(Protocol):
    """A runtime may also offer decode_greedy(first_token, n) -> Iterator[int], greedy decode with the next step
    queued while the host reads each token; qprof.runtime.in_flight.decode_greedy falls back to decode + sample."""

    config: ModelConfig
    device: str  # "cpu" or "cuda"
    n_ctx: int  # KV-cache capacity in tokens
    n_past: int  # tokens already in the KV cache

    def reset(self) -> None:
        """Empty the KV cache (n_past = 0) without reallocating it."""

    def prefill(self, tokens: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        """Run the prompt; logits of the last position [n_vocab], or of all [n_tokens, n_vocab]."""

    def decode(self, token: int) -> torch.Tensor:
        """One token through the model at position n_past; its logits [n_vocab] (on the runtime's device)."""

    def sample(self, logits: torch.Tensor, params: SamplingParams) -> int:
        """Pick the next token on the runtime's device; only the chosen id comes back to the host."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode token must read: every matrix once, one embedding row.

    This is the numerator of the memory-traffic floor: tokens/s <= bandwidth / these bytes.
    """
    total = 0
    for name, t in model.tensors.items():
        if name == "token_embd.weight":
            total += t.n_bytes // t.shape[0]
            if model.config.tied_embeddings:  # the same matrix is read whole as the output projection
                total += t.n_bytes
        else:
            total += t.n_bytes
    return total


class TokenChecks:
    """Mixin: the runtime's token check (same refusals, same words, on every device)."""

    def _check_tokens(self, tokens: Sequence[int]) -> list[int]:
        return check_tokens(tokens, self.config.n_vocab, self.n_past, self.n_ctx)


def check_tokens(tokens: Sequence[int], n_vocab: int, n_past: int, n_ctx: int) -> list[int]:
    """Token ids as ints, or a one-line QprofError: empty, outside the vocabulary, or past the KV cache."""
    from qprof.errors import QprofError

    tokens = [int(t) for t in tokens]
    if not tokens:
        raise QprofError("empty prompt: nothing to run")
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise QprofError(f"token id {bad[0]} is outside the vocabulary of {n_vocab}")
    if n_past + len(tokens) > n_ctx:
        if n_past == 0:
            raise QprofError(f"prompt of {len(tokens)} tokens does not fit the context of {n_ctx} tokens "
                             "(raise --ctx or shorten the prompt)")
        raise QprofError(f"context full: {n_past} + {len(tokens)} tokens exceed {n_ctx} (raise --ctx)")
    return tokens
