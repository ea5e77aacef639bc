"""Runs `qprof check`: loads the registered ops, expands a Selection into cases, measures each one.

Cases run grouped (one weight and its reference at a time); an exception inside a case becomes an
ERROR row naming it rather than ending the run. The forward ops come from
qprof.check.forward_cases when that module exists, through its `register_ops(register)` hook.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from qprof.check.registry import REGISTRY, Case, CheckContext, Measurement, Op, Selection, measure, register
from qprof.errors import QprofError

FORWARD_MODULE = "qprof.check.forward_cases"


@dataclass(frozen=True)
class CaseResult:
    case: Case
    measurement: Measurement | None
    status: str  # PASS | FAIL | ERROR
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "PASS"


_loaded = False


def load_ops() -> dict[str, Op]:
    """Every registered op: the quantized ones always, the forward ones when their module exists."""
    global _loaded
    if not _loaded:
        importlib.import_module("qprof.check.quant_cases")
        try:
            module = importlib.import_module(FORWARD_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name != FORWARD_MODULE:
                raise
            module = None
        if module is not None and hasattr(module, "register_ops"):
            module.register_ops(register)
        importlib.import_module("qprof.check.fused_cases").register_ops(register)
        _loaded = True
    return dict(REGISTRY)


def select_ops(selection: Selection) -> list[Op]:
    ops = load_ops()
    if selection.ops is None:
        return list(ops.values())
    unknown = [name for name in selection.ops if name not in ops]
    if unknown:
        raise QprofError(f"unknown check op {unknown[0]!r}; known: {', '.join(ops)}")
    return [ops[name] for name in selection.ops]


def collect_cases(selection: Selection) -> list[tuple[Op, Case]]:
    """All selected cases, ordered so that each group's cases run together."""
    pairs = [(op, case) for op in select_ops(selection) for case in op.cases(selection)
             if selection.wants_type(case.qtype) and selection.wants_n(case.n)]
    order: dict[tuple, int] = {}
    for _, case in pairs:
        order.setdefault(case.group, len(order))
    return sorted(pairs, key=lambda p: order[p[1].group])  # stable: op order kept inside a group


def run_case(op: Op, case: Case, ctx: CheckContext) -> CaseResult:
    try:
        if case.measure is not None:
            m = case.measure(ctx)
        else:
            got = op.run(case, ctx)
            m = measure(got, op.reference(case, ctx), op.threshold_for(case))
    except QprofError as exc:
        return CaseResult(case, None, "ERROR", str(exc))
    except (RuntimeError, ValueError) as exc:  # a kernel or torch failure inside one case
        return CaseResult(case, None, "ERROR", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return CaseResult(case, m, "PASS" if m.passed else "FAIL")


def run_checks(selection: Selection, on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    from qprof.runtime.cuda.driver import synchronize

    ctx = CheckContext(selection)
    results: list[CaseResult] = []
    group = None
    for op, case in collect_cases(selection):
        if case.group != group:
            ctx.drop_cache()
            group = case.group
        res = run_case(op, case, ctx)
        if res.status == "ERROR":
            try:  # an asynchronous fault would otherwise be blamed on the next case
                synchronize()
            except QprofError as exc:
                res = CaseResult(case, None, "ERROR", f"{res.message}; {exc}")
        results.append(res)
        if on_result is not None:
            on_result(res)
    ctx.drop_cache()
    return results


@dataclass(frozen=True)
class InjectVerdict:
    """With --inject: do the failures match what the traits table predicts?"""

    expected_types: tuple[str, ...]
    failing_types: tuple[str, ...]
    unexpected: tuple[str, ...]  # labels of cases that failed without being predicted to
    missed: tuple[str, ...]  # labels of cases predicted to fail that passed

    @property
    def matches(self) -> bool:
        return not self.unexpected and not self.missed


def inject_verdict(results: list[CaseResult]) -> InjectVerdict:
    expected = sorted({r.case.qtype for r in results if r.case.expect_inject_failure})
    failing = sorted({r.case.qtype or "-" for r in results if r.failed})
    unexpected = tuple(r.case.label for r in results if r.failed and not r.case.expect_inject_failure)
    missed = tuple(r.case.label for r in results if not r.failed and r.case.expect_inject_failure)
    return InjectVerdict(tuple(expected), tuple(failing), unexpected, missed)


def worst_nmse(results: list[CaseResult]) -> float:
    vals = [r.measurement.nmse for r in results if r.measurement is not None and not r.failed]
    return max(vals) if vals else math.nan
