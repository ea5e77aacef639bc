"""`qprof kernels build|report`: ahead-of-time PTX for every kernels/*.cu, and its ptxas resource table."""

from __future__ import annotations

import json
import time

import click

from qprof.runtime.cuda.ptxas import DEFAULT_ARCH


@click.group()
def kernels():
    """Compile the CUDA kernels ahead of time, or report their registers, shared memory and spills."""


@kernels.command()
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="Compute capability digits (90 = H100).")
@click.option("--force", is_flag=True, help="Recompile even when the cache already holds this source's PTX.")
def build(arch, force):
    """nvcc-compile every kernels/*.cu to PTX into the disk cache the runtime loads from."""
    from qprof.runtime.cuda.ptxas import build_ptx, check_arch, kernel_sources

    arch = check_arch(arch)
    for source in kernel_sources():
        t0 = time.perf_counter()
        path, compiled = build_ptx(source, arch, force=force)
        how = f"compiled in {time.perf_counter() - t0:.1f} s" if compiled else "cached"
        click.echo(f"{source.name:<16} -> {path} ({how})")


@kernels.command()
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="Compute capability digits (90 = H100).")
@click.option("--file", "only", default=None, metavar="NAME", help="Only this kernels/ file (e.g. matvec).")
@click.option("--json", "as_json", is_flag=True, help="One JSON list instead of the table.")
def report(arch, only, as_json):
    """ptxas -v for every kernel: registers, shared memory, stack frame and spill bytes."""
    from qprof.bench.progress import Progress
    from qprof.runtime.cuda.ptxas import check_arch, format_report, kernel_sources
    from qprof.runtime.cuda.ptxas import report as ptxas_report

    arch = check_arch(arch)
    n_files = len(kernel_sources(only))
    click.echo(f"qprof kernels: compiling and running ptxas -v on {n_files} kernel file(s) for sm_{arch} "
               "(seconds per file) ...", err=True)
    bar = Progress(n_files, label="ptxas")
    try:
        rows = ptxas_report(arch, only, progress=bar.step)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        click.echo(format_report(rows))
