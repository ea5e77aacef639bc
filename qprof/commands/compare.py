"""`qprof compare A B`: a regression table between two sets of bench results; `--peers`: qprof vs llama.cpp."""

from __future__ import annotations

import click


@click.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("-o", "--output", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--fail-on-regression", is_flag=True,
              help="exit 1 when any config got slower by more than its run-to-run spread")
@click.option("--peers", is_flag=True,
              help="instead: every llama.cpp (peer) row in A (and B) beside the clean qprof row of the same model, "
                   "test and card, with qprof/llama.cpp")
def compare(a, b, fmt, fail_on_regression, peers):
    """Compare bench results B against A, config by config (model, test, device, fault switches, decode loop).

    A and B are a .jsonl file, a directory of them, a glob, or FILE@COMMIT for the rows of one
    build. Each config's latest row is used. A change counts only when |B - A| exceeds the
    combined standard deviation of the two runs, sqrt(sd_A^2 + sd_B^2). llama.cpp's rows (from
    `qprof bench --llama-bench`) are compared only with llama.cpp's rows.
    """
    from qprof.bench.compare import compare_rows, render, render_peers, select
    from qprof.errors import QprofError

    if peers:
        from qprof.bench.peers import LOOP_NOTE, pair_rows, paired_in_flight

        rows = [r for spec in (a, b) if spec for r in select(spec)[0]]
        pairs = pair_rows(rows)
        if not pairs:
            raise QprofError(f"no llama.cpp rows in {' and '.join(s for s in (a, b) if s)} "
                             "(`qprof bench --llama-bench PATH` or --llama-bench-json FILE records them)")
        click.echo(render_peers(pairs, fmt), nl=False)
        paired = [p for p in pairs if p.ratio is not None]
        click.echo(f"qprof compare: {len(pairs)} llama.cpp row(s), {len(paired)} beside a clean qprof row of the "
                   "same model, test and card", err=True)
        if paired_in_flight(pairs):
            click.echo(f"qprof compare: {LOOP_NOTE}", err=True)
        return
    if b is None:
        raise QprofError("compare needs two result sets A and B (or --peers A [B] for qprof vs llama.cpp)")
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
