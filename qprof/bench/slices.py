"""Split a bench plan into slices that workers run apart: each slice loads its one model once."""

from __future__ import annotations

from dataclasses import dataclass

from qprof.bench.params import BenchParams, Group
from qprof.bench.record import options_fields


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi numbers it (NVML index), or a stand-in where no GPU can be asked."""

    index: int
    name: str | None = None
    uuid: str | None = None

    def label(self) -> str:
        return f"GPU {self.index}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class PlanSlice:
    """Consecutive runtime groups of one model: what one worker runs after loading that model once."""

    index: int  # 1-based, for messages: "group 2/5"
    total: int
    groups: tuple[Group, ...]

    @property
    def model(self) -> str:
        return self.groups[0].model

    def n_rows(self) -> int:
        return sum(len(g.tests) for g in self.groups)

    def label(self) -> str:
        modes = list(dict.fromkeys(options_fields(g.options)["options"] for g in self.groups))
        shown = ", ".join(modes[:3]) + (f", … ({len(modes)} modes)" if len(modes) > 3 else "")
        ctx = sorted({g.n_ctx for g in self.groups})
        ctx_text = f"; ctx {','.join(map(str, ctx))}" if len(ctx) > 1 else ""
        return f"group {self.index}/{self.total} ({self.model}: {shown}{ctx_text})"


@dataclass(frozen=True)
class SliceJob:
    """Everything a worker needs to run one slice, picklable for a child process or a Ray task.

    device is what --device asked for (None: the worker picks CUDA when it has a GPU); gpu is the GPU the
    driver pinned the worker to (None under Ray, which assigns one itself).
    """

    params: BenchParams
    slice: PlanSlice
    device: str | None = None
    bandwidth: float | None = None  # --bandwidth and --tflops, checked by the driver; None: measured per card
    tflops: float | None = None
    gpu: GpuInfo | None = None


def _chunks(items: list, n: int) -> list[list]:
    """items cut into n contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def split_plan(params: BenchParams, n_workers: int) -> list[PlanSlice]:
    """At least one slice per model, and more for the models with most groups until every worker has one.

    Models never share a slice, so each slice loads one model once (the cost a plain run pays per model).
    A model is cut into more slices only while workers would otherwise sit idle; the extra load is the
    price of running its groups side by side.
    """
    by_model: dict[str, list[Group]] = {}
    for group in params.groups():
        by_model.setdefault(group.model, []).append(group)
    cuts = dict.fromkeys(by_model, 1)
    while sum(cuts.values()) < n_workers:
        splittable = [m for m in by_model if cuts[m] < len(by_model[m])]
        if not splittable:
            break
        widest = max(splittable, key=lambda m: len(by_model[m]) / cuts[m])
        cuts[widest] += 1
    parts = [tuple(chunk) for m, groups in by_model.items() for chunk in _chunks(groups, cuts[m])]
    return [PlanSlice(i + 1, len(parts), part) for i, part in enumerate(parts)]
