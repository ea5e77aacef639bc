"""Formats `qprof check` results: the per-case table, the summary lines and the JSON document."""

from __future__ import annotations

import math
from collections import defaultdict

from qprof.check.harness import CaseResult, inject_verdict
from qprof.check.registry import Selection

HEADER = ("op", "type", "shape", "n", "NMSE", "max abs err", "status")


def _fmt_float(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    if math.isnan(v):
        return "nan"
    return f"{v:.2e}"


def _row(r: CaseResult) -> tuple[str, ...]:
    m = r.measurement
    status = r.status
    if m is not None and m.n_nan:
        status += f" ({m.n_nan} NaN)"
    elif r.status == "ERROR":
        status += f": {r.message}"
    return (r.case.op, r.case.qtype or "-", r.case.shape, "-" if r.case.n is None else str(r.case.n),
            _fmt_float(m.nmse if m else None), _fmt_float(m.max_abs_err if m else None), status)


def format_table(results: list[CaseResult], failures_only: bool = False) -> str:
    rows = [_row(r) for r in results if r.failed or not failures_only]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def per_type_counts(results: list[CaseResult]) -> dict[str, tuple[int, int]]:
    """{type: (passed, total)} in first-seen order."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        c = counts[r.case.qtype or "-"]
        c[0] += not r.failed
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def summary_lines(results: list[CaseResult], selection: Selection, device: str = "") -> list[str]:
    n_fail = sum(r.failed for r in results)
    n_nan = sum(1 for r in results if r.measurement is not None and r.measurement.n_nan)
    n_err = sum(r.status == "ERROR" for r in results)
    head = f"qprof check{' on ' + device if device else ''}: {len(results)} cases, {len(results) - n_fail} passed, "
    head += f"{n_fail} failed ({n_nan} with NaN, {n_err} errors); shapes={selection.shapes}"
    if selection.inject:
        head += f", inject={selection.inject}"
    lines = [head]
    ops: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        ops[r.case.op][0] += not r.failed
        ops[r.case.op][1] += 1
    lines.append("by op:   " + "  ".join(f"{k} {p}/{t}" for k, (p, t) in ops.items()))
    lines.append("by type: " + "  ".join(f"{k} {p}/{t}" for k, (p, t) in per_type_counts(results).items()))
    if selection.inject:
        v = inject_verdict(results)
        expected = ", ".join(v.expected_types) or "none"
        failing = ", ".join(v.failing_types) or "none"
        verdict = "match" if v.matches else "MISMATCH"
        lines.append(f"inject {selection.inject}: traits predict failures in [{expected}]; failing: [{failing}] -> {verdict}")
        for label in v.unexpected[:5]:
            lines.append(f"  unexpected failure: {label}")
        for label in v.missed[:5]:
            lines.append(f"  predicted failure passed: {label}")
    return lines


def to_json(results: list[CaseResult], selection: Selection, device: str = "") -> dict:
    doc: dict = {
        "device": device,
        "selection": {"shapes": selection.shapes, "ops": selection.ops, "types": selection.types,
                      "n": selection.n, "inject": selection.inject},
        "cases": [
            {"op": r.case.op, "type": r.case.qtype, "shape": r.case.shape, "n": r.case.n, "status": r.status,
             "nmse": None if r.measurement is None or not math.isfinite(r.measurement.nmse) else r.measurement.nmse,
             "max_abs_err": None if r.measurement is None else r.measurement.max_abs_err,
             "n_nan": None if r.measurement is None else r.measurement.n_nan,
             "threshold": None if r.measurement is None else r.measurement.threshold,
             "expect_inject_failure": r.case.expect_inject_failure, "message": r.message}
            for r in results
        ],
        "summary": {"cases": len(results), "failed": sum(r.failed for r in results)},
    }
    if selection.inject:
        v = inject_verdict(results)
        doc["inject"] = {"expected_types": list(v.expected_types), "failing_types": list(v.failing_types),
                         "matches": v.matches, "unexpected": list(v.unexpected), "missed": list(v.missed)}
    return doc
