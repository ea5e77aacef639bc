"""The registry behind `qprof check`: ops register case generators, GPU runners, references and thresholds.

An Op yields Cases for a Selection (shapes, types, n). The harness runs each case's GPU runner on
NaN-poisoned outputs and its reference, and compares them (NMSE and max abs error, any NaN fails).
Cases of one `group` share CheckContext.cache (an uploaded weight, its float64 reference), which
the harness drops between groups so Mistral-size references do not pile up in device memory.
An op whose cases already measure themselves (the forward ops) sets Case.measure instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from qprof.errors import QprofError

EXACT_NMSE = 1e-7  # pure dequantization / gathering: float32 rounding only
MATMUL_NMSE = 5e-4  # matmul-like ops (float16 weights or activations on the prefill path, quantized x in decode)
FLOAT32_DOT_NMSE = 1e-9  # a product whose math is exact in float32 (float weights times float x)
SHAPE_SETS = ("small", "mistral", "all")


@dataclass(frozen=True)
class Measurement:
    nmse: float
    max_abs_err: float | None
    n_nan: int
    threshold: float

    @property
    def passed(self) -> bool:
        return self.n_nan == 0 and math.isfinite(self.nmse) and self.nmse <= self.threshold


@dataclass(frozen=True)
class Selection:
    """What to run: shape set, op names, types and n values (None = all)."""

    shapes: str = "all"
    ops: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    n: tuple[int, ...] | None = None
    inject: str | None = None

    def __post_init__(self) -> None:
        if self.shapes not in SHAPE_SETS:
            raise QprofError(f"unknown shape set {self.shapes!r}; choose from {', '.join(SHAPE_SETS)}")

    @property
    def small(self) -> bool:
        return self.shapes in ("small", "all")

    @property
    def mistral(self) -> bool:
        return self.shapes in ("mistral", "all")

    def wants_type(self, qtype: str | None) -> bool:
        return qtype is None or self.types is None or qtype in self.types

    def wants_n(self, n: int | None) -> bool:
        return n is None or self.n is None or n in self.n


@dataclass(frozen=True)
class Case:
    op: str
    qtype: str | None  # quant/float type of the weight, None for ops without one
    shape: str  # e.g. "4096x14336" or a forward op's label
    n: int | None  # tokens / ids / batch columns; None where it does not apply
    group: tuple = ()  # cases with equal groups share CheckContext.cache
    params: tuple = ()  # op-specific (rows, cols, ...)
    expect_inject_failure: bool = False  # the injected fault should break this case
    measure: Callable[[CheckContext], Measurement] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        n = "" if self.n is None else f" n={self.n}"
        return f"{self.op} {self.qtype or '-'} {self.shape}{n}"


@dataclass(frozen=True)
class Op:
    name: str
    threshold: float
    cases: Callable[[Selection], Iterable[Case]]
    run: Callable[[Case, CheckContext], torch.Tensor] | None = None  # GPU result (outputs poisoned first)
    reference: Callable[[Case, CheckContext], torch.Tensor] | None = None  # float64, same shape
    description: str = ""
    injectable: bool = False  # --inject changes this op's launches
    # a tighter limit for some weight types (e.g. float weights on an exact float32 path), by type name
    type_thresholds: tuple[tuple[str, float], ...] = ()

    def threshold_for(self, case: Case) -> float:
        return dict(self.type_thresholds).get(case.qtype or "", self.threshold)


class CheckContext:
    """Per-run state handed to runners and references."""

    def __init__(self, selection: Selection):
        self.selection = selection
        self.cache: dict[Any, Any] = {}

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def drop_cache(self) -> None:
        self.cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def poisoned(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A new device buffer full of NaN: anything a kernel fails to write stays NaN."""
        return torch.full(shape, float("nan"), dtype=dtype, device="cuda")

    @staticmethod
    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan"))


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add an op; a second, different op under the same name is a programming error."""
    existing = REGISTRY.get(op.name)
    if existing is not None and existing is not op:
        raise QprofError(f"check op {op.name!r} is registered twice")
    REGISTRY[op.name] = op
    return op


def nmse(got: torch.Tensor, ref: torch.Tensor) -> float:
    """sum((got - ref)^2) / sum(ref^2) in float64; inf when got holds NaN or inf."""
    got64, ref64 = got.detach().double(), ref.detach().to(got.device).double()
    if not bool(torch.isfinite(got64).all()):
        return math.inf
    err = float(((got64 - ref64) ** 2).sum())
    denom = float((ref64 * ref64).sum())
    return err / denom if denom > 0 else err


def measure(got: torch.Tensor, ref: torch.Tensor, threshold: float) -> Measurement:
    if tuple(got.shape) != tuple(ref.shape):
        raise QprofError(f"result shape {list(got.shape)} differs from the reference's {list(ref.shape)}")
    n_nan = int(torch.isnan(got).sum())
    diff = (got.detach().double() - ref.detach().to(got.device).double()).abs()
    finite = torch.isfinite(diff)
    max_abs = float(diff[finite].max()) if bool(finite.any()) else None
    return Measurement(nmse(got, ref), max_abs, n_nan, threshold)
