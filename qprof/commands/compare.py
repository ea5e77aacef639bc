"""`qprof compare A B`: a regression table between two sets of bench results."""

from __future__ import annotations

import click


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("-o", "--output", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--fail-on-regression", is_flag=True,
              help="exit 1 when any config got slower by more than its run-to-run spread")
def compare(a, b, fmt, fail_on_regression):
    """Compare bench results B against A, config by config (model, test, device, fault switches).

    A and B are a .jsonl file, a directory of them, a glob, or FILE@COMMIT for the rows of one
    build. Each config's latest row is used. A change counts only when |B - A| exceeds the
    combined standard deviation of the two runs, sqrt(sd_A^2 + sd_B^2).
    """
    from qprof.bench.compare import compare_rows, render, select
    from qprof.errors import QprofError

    a_rows, a_name = select(a)
    b_rows, b_name = select(b)
    changes, only_a, only_b = compare_rows(a_rows, b_rows)
    if not changes:
        raise QprofError(f"no config appears in both {a} and {b} (same model, test, device and switches)")
    click.echo(render(changes, fmt, a_name, b_name), nl=False)
    if only_a or only_b:
        click.echo(f"qprof compare: {only_a} config(s) only in A, {only_b} only in B (not compared)", err=True)
    slower = [c for c in changes if c.significant and c.b_ts < c.a_ts]
    faster = [c for c in changes if c.significant and c.b_ts > c.a_ts]
    click.echo(f"qprof compare: {len(changes)} compared: {len(faster)} faster, {len(slower)} slower, "
               f"{len(changes) - len(faster) - len(slower)} within noise", err=True)
    if fail_on_regression and slower:
        raise SystemExit(1)
