"""`qprof doctor`: what this machine has, and what qprof will and won't run on it."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Report Python/package versions, CUDA and the GPU, nsys, compilers, NVTX and NVML."""
    from qprof.doctor import collect, format_report

    report = collect()
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))
