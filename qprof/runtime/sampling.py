"""Next-token choice: greedy, or temperature + top-p with a seeded generator, in torch ops on any device.

Everything stays on the logits' device; only the chosen id (a 0-d tensor) is returned, so the
CUDA runtime reads back one integer per token.
"""

from __future__ import annotations

import torch

from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams


def check_params(params: SamplingParams) -> None:
    if params.temperature < 0:
        raise QprofError(f"temperature must be >= 0, got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise QprofError(f"top-p must be in (0, 1], got {params.top_p}")


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Index of the largest logit (the first one on ties)."""
    return torch.argmax(logits, dim=-1)


def top_p_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Probabilities after temperature, with everything outside the top-p nucleus set to zero."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    # keep a token if the mass before it is still below top_p: the top token is always kept
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


class Sampler:
    """Picks tokens for one generation; the same params and seed give the same tokens every run."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu"):
        check_params(params)
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=torch.device(device))
            self.generator.manual_seed(int(params.seed))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return greedy(logits)
        probs = top_p_probs(logits, self.params.temperature, self.params.top_p)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


def sample(logits: torch.Tensor, params: SamplingParams) -> int:
    """One-off choice with a fresh generator (for callers that keep no Sampler)."""
    return int(Sampler(params, logits.device)(logits))
