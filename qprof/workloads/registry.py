"""The named workloads: read from workloads/recipes.json (shape families x quantization recipes)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from qprof.errors import QprofError
from qprof.model.config import ModelConfig

ORIGINAL = "original"  # the recipe name meaning "the source file as it is"
WEIGHT_KINDS = ("random-blocks", "quantized-normal", "requantized")


def workloads_dir() -> Path:
    """The top-level workloads/ folder (recipes and prompts); $QPROF_WORKLOADS_DIR overrides it."""
    override = os.environ.get("QPROF_WORKLOADS_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "workloads"
    if not (path / "recipes.json").is_file():
        raise QprofError(f"workload recipes not found at {path / 'recipes.json'} (set QPROF_WORKLOADS_DIR)")
    return path


@dataclass(frozen=True)
class Workload:
    """One named workload: a shape family and the recipe that assigns quant types to its tensors."""

    name: str
    family: str
    recipe: str
    weights: str  # one of WEIGHT_KINDS
    description: str
    config: ModelConfig
    source: str | None = None  # "packaged:smollm2" for real-model families

    @property
    def kind(self) -> str:
        if self.source and self.recipe == ORIGINAL:
            return "real"
        return "real-requantized" if self.source else "synthetic"


def _config(family: str, raw: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig(**raw)
    except TypeError as exc:
        raise QprofError(f"workloads/recipes.json: family {family!r} has a bad config: {exc}") from None


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Workload]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QprofError(f"cannot read {path}: {exc}") from None
    out: dict[str, Workload] = {}
    for family, spec in data["families"].items():
        if spec["weights"] not in WEIGHT_KINDS:
            raise QprofError(f"{path.name}: family {family!r} has unknown weights kind {spec['weights']!r}")
        config = _config(family, spec["config"])
        for recipe in spec["recipes"]:
            name = family if recipe == ORIGINAL else f"{family}-{recipe}"
            out[name] = Workload(
                name=name,
                family=family,
                recipe=recipe,
                weights=spec["weights"],
                description=spec["description"],
                config=config,
                source=spec.get("source"),
            )
    return out


def all_workloads() -> dict[str, Workload]:
    return _load(workloads_dir() / "recipes.json")


def get_workload(name: str) -> Workload:
    """The workload called name; an unknown name is a one-line error listing the known ones."""
    workloads = all_workloads()
    try:
        return workloads[name]
    except KeyError:
        raise QprofError(
            f"unknown model or workload {name!r} (not a file either); workloads: {', '.join(workloads)}"
        ) from None


def list_prompts() -> list[str]:
    return sorted(p.stem for p in (workloads_dir() / "prompts").glob("*.txt"))


def load_prompt(name: str) -> str:
    """Text of workloads/prompts/<name>.txt (trailing newline removed)."""
    path = workloads_dir() / "prompts" / f"{name}.txt"
    if not path.is_file():
        raise QprofError(f"unknown prompt {name!r}; prompts: {', '.join(list_prompts())}")
    return path.read_text(encoding="utf-8").rstrip("\n")
