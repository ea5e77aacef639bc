"""Named, seeded workloads (synthetic Mistral-7B / tiny models, requantized SmolLM2) and -m resolution."""

from __future__ import annotations

from dataclasses import dataclass

from qprof.workloads.registry import Workload, all_workloads, get_workload, load_prompt
from qprof.workloads.resolve import cache_root, make_workload, resolve_model

DEFAULT_GPU_WORKLOAD = "mistral-7b-q4_k_m"
DEFAULT_CPU_WORKLOAD = "tiny-q4_k_m"


@dataclass(frozen=True)
class WorkloadRow:
    name: str
    kind: str
    description: str
    approx_bytes: int


def list_workloads() -> list[WorkloadRow]:
    """One row per workload: name, kind (synthetic / real / real-requantized), description, approx size."""
    from qprof.workloads.resolve import expected_bytes

    return [WorkloadRow(w.name, w.kind, w.description, expected_bytes(w)) for w in all_workloads().values()]


__all__ = [
    "DEFAULT_CPU_WORKLOAD",
    "DEFAULT_GPU_WORKLOAD",
    "Workload",
    "WorkloadRow",
    "cache_root",
    "get_workload",
    "list_workloads",
    "load_prompt",
    "make_workload",
    "resolve_model",
]
