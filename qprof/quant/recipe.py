"""Quantization recipes: which GGUF type each tensor gets (llama.cpp's Q4_K_M mix and pure types).

The rules follow llama.cpp's llama-quant.cpp (without an importance matrix):
- tensors that are not 2-D weight matrices (norms, biases, 1-D tensors) stay F32;
- Q4_K_M: output.weight Q6_K; attn_v and ffn_down Q6_K on the layers `use_more_bits` picks;
  everything else (token_embd included, unless it doubles as the output) Q4_K;
- a pure recipe gives every 2-D weight, output.weight included, its one type;
- a row length the chosen type cannot split into blocks falls back per `fallback`
  (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), and to F16 if that fails too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from qprof.errors import QprofError
from qprof.quant.traits import QUANTIZED_TYPES, traits

_LAYER = re.compile(r"(?:^|\.)blk\.(\d+)\.")

# llama.cpp tensor_type_fallback: a compatible 32-value type for rows that are not a multiple of 256.
LLAMA_FALLBACK: dict[str, str] = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
# When even the fallback does not fit (rows not a multiple of 32), llama.cpp stores F16.
LAST_RESORT = "F16"


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's Q4_K_M/Q5_K_M layer pick: the first and last eighth, and every third layer between."""
    lo, hi = n_layer // 8, 7 * n_layer // 8
    return i_layer < lo or i_layer >= hi or (i_layer - lo) % 3 == 2


def layer_index(tensor_name: str) -> int | None:
    """N of a `blk.N.` tensor name, None for tensors outside the layer stack."""
    m = _LAYER.search(tensor_name)
    return int(m.group(1)) if m else None


def is_quantizable(tensor_name: str, shape: Sequence[int]) -> bool:
    """2-D (or higher) weight matrices; llama.cpp never quantizes norms, biases or 1-D tensors."""
    return len(shape) >= 2 and tensor_name.endswith("weight") and "_norm" not in tensor_name


@dataclass(frozen=True)
class Rule:
    """Tensors whose name matches `pattern` (regex search) get `qtype`, on the layers `layers` accepts."""

    pattern: str
    qtype: str
    layers: Callable[[int, int], bool] | None = None

    def matches(self, tensor_name: str, n_layer: int) -> bool:
        if not re.search(self.pattern, tensor_name):
            return False
        if self.layers is None:
            return True
        i = layer_index(tensor_name)
        if i is None:
            return False
        if not 0 <= i < n_layer:
            raise QprofError(f"tensor {tensor_name!r} has layer {i}, outside a model of {n_layer} layers")
        return self.layers(i, n_layer)


@dataclass(frozen=True)
class Recipe:
    """A named mapping from tensor name and shape to a GGUF type."""

    name: str
    default: str
    rules: tuple[Rule, ...] = ()
    fallback: Mapping[str, str] = field(default_factory=lambda: dict(LLAMA_FALLBACK))
    description: str = ""

    def fit(self, qtype: str, n_cols: int) -> str:
        """`qtype` if rows of n_cols values split into its blocks, else its fallback (or F16)."""
        if n_cols % traits(qtype).block_values == 0:
            return qtype
        alt = self.fallback.get(qtype, LAST_RESORT)
        return alt if n_cols % traits(alt).block_values == 0 else LAST_RESORT

    def type_for(
        self, tensor_name: str, shape: Sequence[int], n_layer: int, *, tied_embeddings: bool = False
    ) -> str:
        """The type for one tensor (shape in torch order, rows last-dim contiguous).

        With tied_embeddings (no output.weight; token_embd is also the output projection),
        token_embd.weight is treated as the output tensor, as llama.cpp does.
        """
        if not is_quantizable(tensor_name, shape):
            return "F32"
        if n_layer < 1:
            raise QprofError(f"recipe {self.name}: n_layer must be at least 1, got {n_layer}")
        name = "output.weight" if tied_embeddings and tensor_name == "token_embd.weight" else tensor_name
        chosen = next((r.qtype for r in self.rules if r.matches(name, n_layer)), self.default)
        return self.fit(chosen, int(shape[-1]))

    def plan(
        self, shapes: Mapping[str, Sequence[int]], n_layer: int, *, tied_embeddings: bool | None = None
    ) -> dict[str, str]:
        """Types for a whole model; embeddings count as tied when there is no output.weight."""
        tied = "output.weight" not in shapes if tied_embeddings is None else tied_embeddings
        return {n: self.type_for(n, s, n_layer, tied_embeddings=tied) for n, s in shapes.items()}


def _pure(qtype: str) -> Recipe:
    return Recipe(qtype, qtype, description=f"every 2-D weight {qtype} (llama-quantize --pure)")


Q4_K_M = Recipe(
    "Q4_K_M",
    "Q4_K",
    rules=(
        Rule(r"^output\.weight$", "Q6_K"),
        Rule(r"attn_(v|qkv|kv_b)\.weight", "Q6_K", use_more_bits),
        Rule(r"ffn_down", "Q6_K", use_more_bits),
    ),
    description="llama.cpp Q4_K_M: Q4_K, with output and some attn_v/ffn_down layers Q6_K",
)

RECIPES: list[Recipe] = [Q4_K_M, *(_pure(t) for t in QUANTIZED_TYPES)]


def get_recipe(name: str) -> Recipe:
    """The recipe called `name` (case-insensitive)."""
    for r in RECIPES:
        if r.name.upper() == name.upper():
            return r
    raise QprofError(f"unknown quantization recipe {name!r}; known: {', '.join(r.name for r in RECIPES)}")
