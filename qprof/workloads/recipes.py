"""Per-tensor type plans: which quant type every tensor of a workload gets, and what that weighs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qprof.model.config import ModelConfig
from qprof.model.validate import expected_shapes
from qprof.model.writer import FILE_TYPE_BY_QTYPE
from qprof.quant.traits import traits

FLOAT_RECIPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
# llama_ftype values of mixed recipes; single-type recipes use the writer's per-type table.
MIXED_FILE_TYPES = {"q4_k_m": 15, "q5_k_m": 17, "q3_k_m": 12}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    qtype: str
    shape: tuple[int, ...]

    @property
    def n_bytes(self) -> int:
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        return rows * traits(self.qtype).row_bytes(self.shape[-1])


def tensor_types(config: ModelConfig, recipe_name: str) -> dict[str, str]:
    """Type of every tensor of a llama-family model of this config under recipe_name (norms F32)."""
    shapes = expected_shapes(config)
    if recipe_name in FLOAT_RECIPES:
        return {n: "F32" if len(s) == 1 else FLOAT_RECIPES[recipe_name] for n, s in shapes.items()}
    from qprof.quant.recipe import get_recipe  # llama.cpp's rules, with per-tensor fallbacks

    # No output.weight among the shapes means tied embeddings; the recipe then treats token_embd as output.
    return get_recipe(recipe_name).plan(shapes, config.n_layer)


def tensor_plan(config: ModelConfig, recipe_name: str) -> list[PlannedTensor]:
    """Every tensor of a llama-family model of this config, in file order, with its planned type."""
    types = tensor_types(config, recipe_name)
    return [PlannedTensor(n, traits(types[n]).name, s) for n, s in expected_shapes(config).items()]


def file_type_for(recipe_name: str) -> int:
    """general.file_type (llama_ftype) that llama.cpp would record for this recipe."""
    if recipe_name in MIXED_FILE_TYPES:
        return MIXED_FILE_TYPES[recipe_name]
    base = FLOAT_RECIPES.get(recipe_name, recipe_name.upper())
    return FILE_TYPE_BY_QTYPE[base]


def plan_bytes(plan: list[PlannedTensor]) -> int:
    return sum(t.n_bytes for t in plan)


def type_counts(plan: list[PlannedTensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in plan:
        counts[t.qtype] = counts.get(t.qtype, 0) + 1
    return counts
