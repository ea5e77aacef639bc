"""Sampling: greedy, temperature, top-p nucleus, seeded determinism and the distribution it draws from."""

from __future__ import annotations

import pytest
import torch

from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams
from qprof.runtime.sampling import Sampler, greedy, sample, top_p_probs


def test_greedy_is_argmax_first_on_ties():
    logits = torch.tensor([0.1, 3.0, -1.0, 3.0])
    assert int(greedy(logits)) == 1
    assert sample(logits, SamplingParams()) == 1
    assert sample(logits, SamplingParams(temperature=0.0, top_p=0.1, seed=5)) == 1


def test_temperature_scales_softmax():
    logits = torch.tensor([1.0, 2.0, 4.0])
    for t in (0.5, 1.0, 2.0):
        assert torch.allclose(top_p_probs(logits, t, 1.0), torch.softmax(logits / t, -1))


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.2, 0.5, 0.3])
    logits = probs.log()
    # 0.5 alone is below 0.6, so 0.3 joins; 0.2 falls outside
    kept = top_p_probs(logits, 1.0, 0.6)
    assert torch.allclose(kept, torch.tensor([0.0, 0.625, 0.375]))
    # a tiny top_p still keeps the most likely token
    assert torch.allclose(top_p_probs(logits, 1.0, 1e-6), torch.tensor([0.0, 1.0, 0.0]))


def test_same_seed_same_tokens_other_seed_differs():
    torch.manual_seed(0)
    logits = torch.randn(1000)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=42)

    def draw(p):
        s = Sampler(p)
        return [int(s(logits)) for _ in range(50)]

    assert draw(params) == draw(params)
    assert draw(params) != draw(SamplingParams(temperature=1.0, top_p=0.9, seed=43))


def test_draws_follow_the_distribution():
    logits = torch.tensor([0.0, 1.0, 2.0, -5.0])
    params = SamplingParams(temperature=1.0, top_p=1.0, seed=7)
    s = Sampler(params)
    counts = torch.bincount(torch.stack([s(logits) for _ in range(4000)]), minlength=4).float() / 4000
    assert torch.allclose(counts, torch.softmax(logits, -1), atol=0.03)


def test_top_p_never_draws_outside_the_nucleus():
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0, -2.0])
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.8, seed=3))
    drawn = {int(s(logits)) for _ in range(500)}
    assert drawn == {0, 1}


def test_sampler_runs_on_batched_logits():
    logits = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]])
    assert greedy(logits).tolist() == [1, 0]
    s = Sampler(SamplingParams(temperature=0.1, top_p=0.5, seed=0))
    assert s(logits).tolist() == [1, 0]


@pytest.mark.parametrize(
    "params, message",
    [
        (SamplingParams(temperature=-1.0), "temperature must be >= 0"),
        (SamplingParams(temperature=1.0, top_p=0.0), r"top-p must be in \(0, 1\]"),
        (SamplingParams(temperature=1.0, top_p=1.5), r"top-p must be in \(0, 1\]"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(QprofError, match=message):
        Sampler(params)
