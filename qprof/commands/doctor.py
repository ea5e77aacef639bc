"""`qprof doctor`: what this machine has, what qprof will and won't run on it, and the card's measured ceilings."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--measure", is_flag=True,
              help="Measure this GPU's ceilings now (streaming-read and copy bandwidth, fp16/bf16 GEMM rate) and "
                   "cache them for bench and profile.")
def doctor(as_json: bool, measure: bool) -> None:
    """Report Python/package versions, CUDA and the GPU, nsys, compilers, NVTX, NVML and the measured ceilings."""
    from qprof.ceilings.choose import doctor_view
    from qprof.doctor import collect, format_report

    report = collect()
    report.ceilings = doctor_view(measure, log=lambda msg: click.echo(f"qprof doctor: {msg}", err=True))
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))
