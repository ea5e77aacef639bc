"""`qprof check`: every GPU op x quant type x n against an independent reference, NaN-poisoned outputs."""

from __future__ import annotations

import json

import click

from qprof.bench.params import split_list
from qprof.errors import QprofError
from qprof.runtime.options import INJECT_FAULTS


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(split_list(value))
    if not items:
        raise QprofError(f"empty list {value!r}")
    return items


def parse_types(value: str | None) -> tuple[str, ...] | None:
    from qprof.quant.traits import traits

    items = _split(value)
    return None if items is None else tuple(traits(t).name for t in items)


def parse_n(value: str | None) -> tuple[int, ...] | None:
    items = _split(value)
    if items is None:
        return None
    out = []
    for item in items:
        try:
            n = int(item)
        except ValueError:
            raise QprofError(f"--n takes positive integers separated by commas, got {item!r}") from None
        if n <= 0:
            raise QprofError(f"--n takes positive integers separated by commas, got {item!r}")
        out.append(n)
    return tuple(out)


@click.command()
@click.option("--shapes", type=click.Choice(["small", "mistral", "all"]), default="all", show_default=True,
              help="Small shapes, Mistral-7B's shapes, or both.")
@click.option("--ops", "ops_", default=None, metavar="LIST", help="Comma-separated ops (default: all registered).")
@click.option("--types", "types_", default=None, metavar="LIST", help="Comma-separated quant types (default: all).")
@click.option("--n", "n_", default=None, metavar="LIST", help="Comma-separated n values (default: 1..9,16,512).")
@click.option("--inject", type=click.Choice(INJECT_FAULTS), default=None,
              help="Launch the dequantize/prefill kernels with the seed's wrong block size.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@click.option("--failures-only", is_flag=True, help="Table rows for failing cases only (the summary counts all).")
def check(shapes, ops_, types_, n_, inject, as_json, failures_only):
    """Compare every GPU op against a CPU-dequantized float64 reference; exit 1 on any failure."""
    from qprof.check.harness import select_ops
    from qprof.check.registry import Selection

    selection = Selection(shapes=shapes, ops=_split(ops_), types=parse_types(types_), n=parse_n(n_), inject=inject)
    select_ops(selection)  # an unknown op name is reported before anything needs a GPU

    import torch

    if not torch.cuda.is_available():
        raise QprofError("no CUDA GPU: qprof check runs the kernels on a GPU (torch.cuda.is_available() is False)")

    from qprof.check.harness import collect_cases, run_checks
    from qprof.check.report import format_table, summary_lines, to_json

    n_cases = len(collect_cases(selection))
    if n_cases == 0:
        raise QprofError("the selection matches no check cases")
    click.echo(f"qprof check: {n_cases} cases ...", err=True)
    results = run_checks(selection)
    device = torch.cuda.get_device_name()
    if as_json:
        click.echo(json.dumps(to_json(results, selection, device), indent=1))
    else:
        click.echo(format_table(results, failures_only=failures_only))
        click.echo("\n".join(summary_lines(results, selection, device)))
    if any(r.failed for r in results):
        click.get_current_context().exit(1)
