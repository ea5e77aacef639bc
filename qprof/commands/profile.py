"""`qprof profile`: where every millisecond of a quantized forward goes, and why (issue: profiler)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qprof.errors import QprofError
from qprof.runtime.options import DECODE_LOOPS, KV_TYPES


def say(msg: str) -> None:
    click.echo(f"qprof profile: {msg}", err=True)


def _trace_path(base: Path, label: str, many: bool) -> Path:
    if not many:
        return base
    safe = label.replace("=", "-").replace(",", "_")
    return base.with_name(f"{base.stem}-{safe}{base.suffix}")


def _save(run, summary: dict, out: Path | None, trace: Path | None, many: bool) -> None:
    from qprof.analysis.trace_export import write_chrome_trace

    if trace is not None:
        path = write_chrome_trace(run.table, _trace_path(trace, run.label, many), run.result.device_name)
        run.artifacts["trace"] = str(path)
        summary["artifacts"]["trace"] = str(path)
    if out is not None:
        d = out / run.label.replace("=", "-").replace(",", "_") if many else out
        d.mkdir(parents=True, exist_ok=True)
        run.table.to_csv(d / "activity.csv", index=False)
        (d / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        summary["artifacts"]["activity_csv"] = str(d / "activity.csv")


@click.command()
@click.option("-m", "--model", default=None, metavar="FILE|WORKLOAD",
              help="GGUF file or workload name (default: synthetic Mistral-7B Q4_K_M on a GPU, tiny model on CPU)")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="default: cuda when a GPU is available, else cpu (it says which)")
@click.option("--timing", type=click.Choice(["events", "blocking", "nsys", "torch"]), default="torch",
              show_default=True,
              help="events: CUDA events per op | blocking: CUDA_LAUNCH_BLOCKING child, host timers | "
                   "nsys: Nsight Systems capture | torch: torch.profiler (Kineto) in-process")
@click.option("-p", "--n-prompt", default=128, show_default=True, type=int, help="prompt tokens (prefill)")
@click.option("-n", "--n-gen", default=32, show_default=True, type=int, help="decode steps")
@click.option("--mask", type=click.Choice(["upload", "device", "skip"]), default="skip", show_default=True,
              help="causal mask: upload = built on the host every forward (fault), device = kept on the GPU, "
                   "skip = none for single-token decode")
@click.option("--scalar-upload", is_flag=True, help="fault: copy a scalar host->device inside every layer")
@click.option("--sync-every-op", is_flag=True, help="fault: synchronize the device after every op")
@click.option("--inject", type=click.Choice(["block-dim"]), default=None,
              help="fault: launch dequant kernels with a block size their type does not expect")
@click.option("--graphs", is_flag=True,
              help="capture the decode step as a CUDA graph; nsys and torch timing charge each replayed kernel to the "
                   "op that added it at capture, events timing times the graph per token")
@click.option("--no-nvtx", is_flag=True, help="no NVTX ranges (nsys still gets them)")
@click.option("--faults", is_flag=True, help="run clean and every fault switch; compare tok/s and attribution")
@click.option("--trace", "trace", type=click.Path(dir_okay=False), default=None,
              help="write a Perfetto/Chrome JSON trace (FILE.json; with --faults one per configuration)")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="directory for artifacts: activity.csv, summary.json, nsys report, Kineto trace")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of the text report")
@click.option("--nvtx-overhead", is_flag=True, help="measure decode tok/s with NVTX off, on (ranges only when a tool is attached) and forced "
                   "on (QPROF_NVTX=1), then stop")
@click.option("--agreement", is_flag=True,
              help="profile with events, torch and nsys (where available) and compare per-op totals, then stop")
@click.option("--repeats", default=3, show_default=True, type=int, help="alternations for --nvtx-overhead")
@click.option("--bandwidth", type=float, default=None, metavar="GB/s",
              help="read bandwidth for the decode floor and kernels' % of peak (default: measured on this GPU, on "
                   "first use, and cached; see `qprof doctor --measure`)")
@click.option("--tflops", type=float, default=None, metavar="TFLOP/s",
              help="GEMM rate for the prefill roofline (default: the fp16 GEMM rate measured on this GPU)")
@click.option("--top", default=8, show_default=True, type=int, help="rows per table")
@click.option("-t", "--threads", type=int, default=None, metavar="N",
              help="CPU threads for torch (default: half the CPUs qprof may use; see qprof bench -h)")
@click.option("--kv-type", "kv_type", type=click.Choice(KV_TYPES), default="f32", show_default=True,
              help="KV cache element type on the GPU (f16 halves the bytes decode attention reads)")
@click.option("--pdl/--no-pdl", default=False, show_default=True,
              help="launch decode kernels as programmatic dependents (sm_90): each starts beside the previous "
                   "one's tail, so kernels overlap on the timeline")
@click.option("--decode-loop", "decode_loop", type=click.Choice(DECODE_LOOPS), default="synced",
              show_default=True,
              help="synced: sample each token before the next step is queued; in-flight: greedy steps chained on "
                   "the device, the next one queued while the host reads each token (bench's default loop)")
def profile(model, device, timing, n_prompt, n_gen, mask, scalar_upload, sync_every_op, inject, graphs, no_nvtx,
            faults, trace, out, as_json, nvtx_overhead, agreement, repeats, bandwidth, tflops, top, threads, kv_type,
            pdl, decode_loop):
    """Profile prefill + decode: tok/s, time by category, per op, copies, syncs, and a diagnosis.

    Every GPU kernel and copy is charged to the NVTX op range that launched it. --faults runs the
    clean configuration and each fault switch and puts them side by side.
    """
    from qprof.analysis import report
    from qprof.ceilings.choose import check_override, run_ceilings
    from qprof.checks import check_context, check_output_file, declared_context
    from qprof.profile.loop import load_model
    from qprof.profile.modes import profile_workload
    from qprof.profile.nvtx_overhead import measure_nvtx_overhead
    from qprof.profile.spec import FAULT_SWITCHES, WorkloadSpec, options_from_flags
    from qprof.profile.summary import graph_agreement, render_graph_agreement, summarize
    from qprof.runtime.options import gpu_only_note
    from qprof.runtime.threads import check_threads, default_threads, set_threads

    # everything a typo can break is checked before the model loads
    check_override(bandwidth, "--bandwidth")
    check_override(tflops, "--tflops")
    check_output_file(trace, "--trace", suffix=".json")
    if faults and (mask != "skip" or scalar_upload or sync_every_op or inject):
        raise QprofError("--faults runs every fault switch itself; drop --mask/--scalar-upload/--sync-every-op/--inject")
    n_threads = check_threads(threads) if threads is not None else default_threads()
    from qprof.commands.bench import pick_device  # the same device choice as `qprof bench`

    dev, why = pick_device(device)
    if model is None:
        from qprof.workloads import DEFAULT_CPU_WORKLOAD, DEFAULT_GPU_WORKLOAD

        model = DEFAULT_GPU_WORKLOAD if dev == "cuda" else DEFAULT_CPU_WORKLOAD
        say(f"no -m given: using the workload {model!r}")
    options = options_from_flags(mask, scalar_upload, sync_every_op, inject, nvtx=not no_nvtx,
                                 cuda_graphs=graphs).with_(kv_type=kv_type, pdl=pdl)
    spec = WorkloadSpec(model, dev, n_prompt, n_gen, options, n_threads=n_threads, decode_loop=decode_loop)
    if not nvtx_overhead:  # the same rule and words as `qprof bench`: prompt + decode within the declared context
        check_context(n_prompt + n_gen, f"-p {n_prompt} + -n {n_gen}", model, *declared_context(model))
    say(f"device {dev} ({why}); CPU threads {n_threads}"
        + (" (default: half the CPUs qprof may use; -t to choose)" if threads is None else ""))
    if dev == "cpu" and (faults or options.label() != "clean"):
        say(gpu_only_note(options, dev) if not faults else
            "the CPU runtime ignores the fault switches (they act on the CUDA runtime only): every configuration "
            "runs as clean, so the differences in the comparison are run-to-run noise")
    set_threads(n_threads)
    loaded = load_model(model)
    out_dir = Path(out) if out else None
    trace_path = Path(trace) if trace else None

    if nvtx_overhead:
        res = measure_nvtx_overhead(spec, repeats, model=loaded)
        if as_json:
            click.echo(json.dumps(res.as_dict(), indent=1))
        else:
            click.echo(res.describe(dev))
        return

    if agreement:
        from qprof.analysis.attribution import agreement as agree

        tables, runs = {}, []
        for mode in ("events", "torch", "nsys"):
            run = profile_workload(spec, mode, out_dir / mode if out_dir else None, model=loaded)
            for note in run.notes:
                say(f"{mode}: {note}")
            if run.timing == mode:
                tables[mode] = run.table
                runs.append(run)
        # torch.profiler's kernel durations (CUPTI) are the reference: events and nsys are compared to them
        table = agree(tables, reference="torch" if "torch" in tables else "events")
        per_token = graph_agreement(runs)
        if as_json:
            click.echo(json.dumps({"agreement": json.loads(table.to_json(orient="index")),
                                   "tg_tok_s": {r.timing: r.result.tg_tok_s for r in runs},
                                   "decode_graph_ms_per_token": per_token}, indent=1))
        else:
            click.echo(report.render_agreement(table))
            if per_token:
                click.echo(render_graph_agreement(per_token))
        return

    from qprof.bench.roofline import prefill_flops

    ceilings = run_ceilings(dev, bandwidth, tflops, log=say)
    flops_per_token = prefill_flops(loaded, n_prompt) / n_prompt if n_prompt > 0 else None
    configs = [(label, spec.with_options(**{"mask": "skip", **changes})) for label, changes in FAULT_SWITCHES] \
        if faults else [(options.label(), spec)]
    many = len(configs) > 1
    summaries, extra = [], []
    for label, cfg in configs:
        say(f"profiling {label} with --timing {timing} ...")
        run = profile_workload(cfg, timing, (out_dir / label.replace("=", "-").replace(",", "_")) if out_dir and many
                               else out_dir, model=loaded)
        summary = summarize(run, ceilings, top=max(top, 10), flops_per_token=flops_per_token)
        _save(run, summary, out_dir, trace_path, many)
        summaries.append(summary)
        if timing == "blocking" and dev == "cuda":
            from qprof.profile.timing_blocking import bias_table

            events_run = profile_workload(cfg, "events", model=loaded)
            bias = bias_table(run.table, events_run.table)
            summary["blocking_bias"] = json.loads(bias.to_json(orient="records"))
            extra.append(report.render_bias(bias))
    if as_json:
        payload = {"runs": summaries}
        if many:
            payload["comparison"] = report.compare(summaries)
        click.echo(json.dumps(payload, indent=1, default=str))
        return
    for s in summaries:
        click.echo(report.render(s, top=top))
        click.echo("")
    for text in extra:
        click.echo(text)
    if many:
        click.echo(report.render_comparison(report.compare(summaries)))
