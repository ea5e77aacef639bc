"""CPU reference forward vs transformers on tiny random models written as GGUF (RoPE convention, GQA, window)."""

from __future__ import annotations

import pytest
import torch
from tiny_gguf import hf_model, unpermute_qk, write_gguf

from qprof.annotate import Annotator, RangeInfo
from qprof.errors import QprofError
from qprof.model.gguf_file import load_model
from qprof.runtime.base import SamplingParams
from qprof.runtime.cpu import CpuRuntime, attention_mask, rope_adjacent, rope_inv_freq

PROMPT = [1, 271, 276, 5, 100, 200, 30, 40, 50, 60, 70, 80, 90, 17]
F32_TOL = 5e-5  # float32 vs float32, same math in a different order


def _hf_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = hf_model(seed=1)
    return model, load_model(write_gguf(tmp_path_factory.mktemp("m") / "llama.gguf", model))


@pytest.fixture(scope="module")
def mistral_window(tmp_path_factory):
    model = hf_model(seed=1, sliding_window=4)
    return model, load_model(write_gguf(tmp_path_factory.mktemp("m") / "swa.gguf", model))


def test_prefill_logits_match_transformers(llama):
    hf, model = llama
    logits = CpuRuntime(model, n_ctx=64).prefill(PROMPT, all_logits=True)
    ref = _hf_logits(hf, PROMPT)
    assert logits.shape == (len(PROMPT), model.config.n_vocab)
    assert (logits - ref).abs().max().item() < F32_TOL
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))


def test_last_logits_only(llama):
    _, model = llama
    rt = CpuRuntime(model, n_ctx=64)
    all_rows = rt.prefill(PROMPT, all_logits=True)
    rt.reset()
    last = rt.prefill(PROMPT)
    assert last.shape == (model.config.n_vocab,)
    assert torch.allclose(last, all_rows[-1], atol=1e-5)


def test_incremental_decode_equals_prefill(llama):
    _, model = llama
    rt = CpuRuntime(model, n_ctx=64)
    full = rt.prefill(PROMPT, all_logits=True)
    rt.reset()
    steps = [rt.prefill(PROMPT[:5])]
    for tok in PROMPT[5:]:
        steps.append(rt.decode(tok))
    assert rt.n_past == len(PROMPT)
    assert (torch.stack(steps) - full[4:]).abs().max().item() < F32_TOL


def test_sliding_window_matches_mistral(mistral_window, llama):
    hf, model = mistral_window
    assert model.config.sliding_window == 4
    rt = CpuRuntime(model, n_ctx=64)
    logits = rt.prefill(PROMPT, all_logits=True)
    assert (logits - _hf_logits(hf, PROMPT)).abs().max().item() < F32_TOL
    # the window is what makes the difference: same weights, no window, diverge only after 4 positions
    plain = CpuRuntime(llama[1], n_ctx=64).prefill(PROMPT, all_logits=True)
    diff = (logits - plain).abs().amax(-1)
    assert diff[:4].max().item() < 1e-5 and diff[4:].min().item() > 1e-2
    # decode honours the window too
    rt.reset()
    steps = [rt.prefill(PROMPT[:6])] + [rt.decode(t) for t in PROMPT[6:]]
    assert (torch.stack(steps) - logits[5:]).abs().max().item() < F32_TOL


def test_tied_embeddings(tmp_path):
    hf = hf_model(seed=2, tied=True, n_layer=1)
    model = load_model(write_gguf(tmp_path / "tied.gguf", hf))
    assert model.config.tied_embeddings and "output.weight" not in model.tensors
    logits = CpuRuntime(model, n_ctx=32).prefill(PROMPT, all_logits=True)
    assert (logits - _hf_logits(hf, PROMPT)).abs().max().item() < F32_TOL


def test_quantized_weights_follow_dequantized_reference(tmp_path):
    """Q8_0 matrices: the runtime must compute with exactly the values gguf-py dequantizes."""
    import gguf

    hf = hf_model(seed=3, n_layer=1)
    model = load_model(write_gguf(tmp_path / "q8.gguf", hf, quant="Q8_0"))
    assert model.tensors["blk.0.attn_q.weight"].qtype == "Q8_0"
    rt = CpuRuntime(model, n_ctx=32)
    # put gguf-py's dequantized values back into the HF model (q/k un-permuted) and compare exactly
    heads = {"attn_q": hf.config.num_attention_heads, "attn_k": hf.config.num_key_value_heads}
    hf_names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
    state = hf.state_dict()
    for gname, hname in hf_names.items():
        t = model.tensors[f"blk.0.{gname}.weight"]
        ref = gguf.quants.dequantize(t.raw, gguf.GGMLQuantizationType.Q8_0)
        assert torch.equal(rt.w[t.name], torch.from_numpy(ref))
        if gname in heads:
            ref = unpermute_qk(ref, heads[gname])
        state[f"model.layers.0.{hname}.weight"].copy_(torch.from_numpy(ref))
    for gname, hname in (("token_embd", "model.embed_tokens"), ("output", "lm_head")):
        t = model.tensors[gname + ".weight"]
        state[hname + ".weight"].copy_(torch.from_numpy(gguf.quants.dequantize(t.raw, gguf.GGMLQuantizationType.Q8_0)))
    logits = rt.prefill(PROMPT, all_logits=True)
    assert (logits - _hf_logits(hf, PROMPT)).abs().max().item() < F32_TOL


def test_rope_adjacent_pairs_and_partial_dims():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 16)
    pos = torch.arange(5)
    full = rope_adjacent(x, pos, rope_inv_freq(16, 10000.0))
    assert torch.allclose(full[0], x[0])  # position 0 is the identity
    assert torch.allclose(full.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths
    # pair (x0, x1) at position p turns by p * theta^0 = p radians
    c, s = torch.cos(torch.tensor(3.0)), torch.sin(torch.tensor(3.0))
    assert torch.allclose(full[3, :, 0], x[3, :, 0] * c - x[3, :, 1] * s, atol=1e-6)
    assert torch.allclose(full[3, :, 1], x[3, :, 0] * s + x[3, :, 1] * c, atol=1e-6)
    # rope_dim 8 < head_dim 16: the first 8 dims rotate as a head of 8, the rest pass through
    part = rope_adjacent(x, pos, rope_inv_freq(8, 10000.0))
    assert torch.allclose(part[..., :8], rope_adjacent(x[..., :8], pos, rope_inv_freq(8, 10000.0)))
    assert torch.equal(part[..., 8:], x[..., 8:])


def test_attention_mask():
    m = attention_mask(torch.arange(3, 6), torch.arange(0, 6), window=2)
    expect = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expect)
    assert torch.equal(attention_mask(torch.arange(2), torch.arange(2), None), torch.tensor([[1, 0], [1, 1]]).bool())


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, RangeInfo]] = []

    def begin(self, info):
        self.events.append(("begin", info))

    def end(self, info):
        self.events.append(("end", info))


def test_annotator_names_every_op(llama):
    _, model = llama
    rec = Recorder()
    rt = CpuRuntime(model, annotator=Annotator(nvtx_enabled=False, listeners=(rec,)), n_ctx=64)
    rt.sample(rt.prefill(PROMPT[:4]), SamplingParams())
    rt.decode(7)
    begins = [info for kind, info in rec.events if kind == "begin"]
    phases = [i.message for i in begins if i.level == "phase"]
    assert phases == ["prefill", "decode"]
    assert [i.meta["token"] for i in begins if i.level == "token"] == [4]
    ops = [i for i in begins if i.level == "op"]
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "rope", "kv_write", "attention", "attn_output",
                 "attn_add", "ffn_norm", "ffn_gate", "ffn_up", "swiglu", "ffn_down", "ffn_add"]
    expect_pass = ["token_embd"] + [f"blk.{i}.{n}" for i in range(model.config.n_layer) for n in per_layer]
    expect_pass += ["output_norm", "output"]
    names = [o.message for o in ops]
    assert names == expect_pass + ["sample"] + expect_pass
    fams = {(o.message, o.category) for o in ops}
    assert ("blk.0.attn_q", "matmul/F32") in fams and ("blk.0.attn_q", "matvec/F32") in fams
    assert ("blk.1.rope", "rope") in fams and ("sample", "sample") in fams and ("blk.0.ffn_add", "add") in fams
    assert ("token_embd", "get_rows/F32") in fams and ("blk.0.swiglu", "swiglu") in fams
    # every begin has its end, properly nested
    depth = 0
    for kind, _ in rec.events:
        depth += 1 if kind == "begin" else -1
        assert depth >= 0
    assert depth == 0


def test_prompt_longer_than_context(llama):
    _, model = llama
    rt = CpuRuntime(model, n_ctx=8)
    with pytest.raises(QprofError, match="prompt of 14 tokens does not fit the context of 8 tokens") as info:
        rt.prefill(PROMPT)
    assert "\n" not in str(info.value)
    rt.prefill(PROMPT[:8])
    with pytest.raises(QprofError, match="context full"):
        rt.decode(5)


def test_bad_tokens(llama):
    _, model = llama
    rt = CpuRuntime(model, n_ctx=8)
    with pytest.raises(QprofError, match="empty prompt"):
        rt.prefill([])
    with pytest.raises(QprofError, match=f"token id 999 is outside the vocabulary of {model.config.n_vocab}"):
        rt.prefill([1, 999])


def test_float32_weights_must_fit_in_memory(llama, monkeypatch):
    from qprof.runtime import weights

    monkeypatch.setattr(weights, "host_memory_bytes", lambda: 1000)
    with pytest.raises(QprofError, match="needs .* GiB of float32 weights.*use --device cuda"):
        CpuRuntime(llama[1], n_ctx=8)


def test_seeded_sampling_restarts_on_reset(llama):
    _, model = llama
    rt = CpuRuntime(model, n_ctx=64)
    params = SamplingParams(temperature=1.5, top_p=0.95, seed=11)

    def run():
        rt.reset()
        tok = rt.sample(rt.prefill(PROMPT[:3]), params)
        out = [tok]
        for _ in range(12):
            tok = rt.sample(rt.decode(tok), params)
            out.append(tok)
        return out

    first = run()
    assert run() == first
