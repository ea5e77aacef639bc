"""`qprof workloads list|make|info`: the named synthetic and real-model workloads, and what a GGUF holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qprof.errors import QprofError


def _size(n_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@click.group()
def workloads() -> None:
    """Named workloads: synthetic Mistral-7B / tiny models and requantized SmolLM2, made locally from a seed."""


@workloads.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List every workload with its kind, approximate size and whether it is already made."""
    from qprof.workloads import list_workloads
    from qprof.workloads.resolve import cached_path

    rows = list_workloads()
    if as_json:
        for r in rows:
            click.echo(json.dumps({"name": r.name, "kind": r.kind, "approx_bytes": r.approx_bytes,
                                   "made": cached_path(r.name).is_file(), "description": r.description}))
        return
    width = max(len(r.name) for r in rows)
    click.echo(f"{'name':<{width}}  {'kind':<16}  {'size':>9}  made  description")
    for r in rows:
        made = "yes" if r.kind == "real" or cached_path(r.name).is_file() else "-"
        click.echo(f"{r.name:<{width}}  {r.kind:<16}  {_size(r.approx_bytes):>9}  {made:<4}  {r.description}")


@workloads.command("make")
@click.argument("name")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write here instead of the cache ($QPROF_CACHE/workloads or ~/.cache/qprof/workloads).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic weights and vocabulary.")
@click.option("--force", is_flag=True, help="Write again even if a complete file exists.")
def make_cmd(name: str, out_dir: Path | None, seed: int, force: bool) -> None:
    """Write workload NAME (deterministic from the seed) and print its path."""
    from qprof.bench.progress import ByteProgress
    from qprof.workloads import make_workload

    path = make_workload(name, out_dir=out_dir, seed=seed, force=force, log=lambda m: click.echo(m, err=True),
                         progress=ByteProgress(f"writing {name}"))
    click.echo(str(path))


@workloads.command("info")
@click.argument("target", metavar="FILE|NAME")
def info_cmd(target: str) -> None:
    """Config, tensor type counts and size of a GGUF file, or the plan of a workload not yet made."""
    from qprof.model.gguf_file import load_model

    path = Path(target).expanduser()
    if not path.exists():
        from qprof.workloads import get_workload
        from qprof.workloads.resolve import cached_path, is_complete

        try:
            workload = get_workload(target)
        except QprofError:
            if "/" in target or target.endswith(".gguf"):
                raise QprofError(f"model file not found: {target}") from None
            raise
        if workload.kind == "real":
            from qprof.workloads.resolve import source_path

            path = source_path(workload)
        elif is_complete(cached_path(target), workload):
            path = cached_path(target)
        else:
            _print_plan(workload)
            return
    _print_model(load_model(path))


def _print_plan(workload) -> None:
    from qprof.workloads.recipes import plan_bytes, tensor_plan, type_counts

    plan = tensor_plan(workload.config, workload.recipe)
    click.echo(f"workload: {workload.name} ({workload.kind}; not made yet: qprof workloads make {workload.name})")
    _print_config(workload.config)
    click.echo(f"tensors:  {len(plan)} ({_counts(type_counts(plan))})")
    click.echo(f"size:     {_size(plan_bytes(plan))} of tensor data (planned)")


def _print_config(cfg) -> None:
    click.echo(f"arch:     {cfg.arch}  vocab {cfg.n_vocab}  embd {cfg.n_embd}  layers {cfg.n_layer}  ff {cfg.n_ff}")
    click.echo(f"heads:    {cfg.n_head} (kv {cfg.n_head_kv}, dim {cfg.head_dim})  rope theta {cfg.rope_theta:g}"
               f" dim {cfg.rope_dim}  rms eps {cfg.rms_eps:g}")
    window = cfg.sliding_window or "none"
    click.echo(f"context:  {cfg.n_ctx}  sliding window {window}  tied embeddings {'yes' if cfg.tied_embeddings else 'no'}")


def _print_model(model) -> None:
    size = model.path.stat().st_size
    click.echo(f"file:     {model.path} ({_size(size)})")
    name = model.metadata.get("general.name", "")
    click.echo(f"name:     {name}  file_type {model.metadata.get('general.file_type', '?')}")
    _print_config(model.config)
    click.echo(f"tensors:  {len(model.tensors)} ({_counts(model.type_counts())})")
    bpw = 8 * model.size_bytes / max(model.n_params, 1)
    click.echo(f"weights:  {model.n_params / 1e6:.1f} M params, {_size(model.size_bytes)}, {bpw:.2f} bits/weight")
