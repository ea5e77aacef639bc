"""`qprof bench`: llama-bench for qprof's runtimes, with the seed's faults as parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qprof.errors import QprofError

SWITCH_HELP = "comma list, one configuration per value"


def pick_device(requested: str | None) -> tuple[str, str]:
    """(device, why) — CUDA when a GPU is there unless --device says otherwise."""
    import torch

    if requested == "cuda":
        from qprof.runtime.cuda.driver import require_cuda

        require_cuda()
        return "cuda", "--device cuda"
    if requested == "cpu":
        return "cpu", "--device cpu"
    if torch.cuda.is_available():
        return "cuda", "a CUDA GPU is available"
    return "cpu", "no CUDA GPU found"


def default_model(device: str) -> str:
    from qprof.workloads import DEFAULT_CPU_WORKLOAD, DEFAULT_GPU_WORKLOAD

    return DEFAULT_GPU_WORKLOAD if device == "cuda" else DEFAULT_CPU_WORKLOAD


def build_params(model, n_prompt, n_gen, pg, repetitions, warmup, mask, scalar_upload, sync_every_op, inject,
                 graphs, nvtx, ctx, device, faults=False, threads=None, kv_type="f32", fused="1",
                 pdl="0", prefill_graphs="1", decode_loop="in-flight"):
    from qprof.bench import params as p
    from qprof.runtime.threads import default_threads

    models = [m for text in model for m in p.split_list(text)]
    if graphs is None:
        cuda_graphs, graphs_auto = p.default_graphs(device, faults)
    else:  # explicit --graphs wins, also under --faults (rows that cannot be captured say so in notes)
        cuda_graphs, graphs_auto = p.parse_bool_list(graphs, "--graphs"), False
    return p.BenchParams(
        models=models or [default_model(device)],
        n_prompt=p.parse_int_list(n_prompt, "-p"),
        n_gen=p.parse_int_list(n_gen, "-n"),
        pg=p.parse_pg(pg),
        repetitions=repetitions,
        warmup=warmup,
        mask=p.parse_mask(mask),
        scalar_upload=p.parse_bool_list(scalar_upload, "--scalar-upload"),
        sync_every_op=p.parse_bool_list(sync_every_op, "--sync-every-op"),
        inject=p.parse_inject(inject),
        decode_loop=p.parse_decode_loop(decode_loop),
        cuda_graphs=cuda_graphs,
        graphs_auto=graphs_auto,
        prefill_graphs=p.parse_bool_list(prefill_graphs, "--prefill-graphs"),
        nvtx=p.parse_bool_list(nvtx, "--nvtx"),
        kv_type=p.parse_kv_types(kv_type),
        fused=p.parse_bool_list(fused, "--fused"),
        pdl=p.parse_bool_list(pdl, "--pdl"),
        n_ctx=p.parse_int_list(ctx, "--ctx", minimum=1) if ctx else [None],
        n_threads=p.parse_int_list(threads, "-t", minimum=1) if threads else [default_threads()],
        faults=faults,
    )


def graphs_summary(params, device: str, explicit: bool) -> str:
    """One line on how decode and prefill run: CUDA graphs or eager, and why."""
    if device != "cuda":
        return "CUDA graphs: not applicable on the CPU (rows record cuda_graphs 0)"
    prefill = ("; prefill too: a chunk shape replays its graph after its first, eager run (--prefill-graphs 0 "
               "for eager prefill)" if any(o.prefill_graphs for o in params.option_sets()) else "")
    if explicit:
        return "CUDA graphs: as --graphs says; configurations that cannot be captured run eagerly (see notes)" + prefill
    if params.faults:
        return ("CUDA graphs: off by default under --faults, so clean and fault rows compare like with like "
                "(--graphs 1 to capture where possible)")
    eager = [o.label() for o in params.option_sets() if not o.cuda_graphs]
    return ("CUDA graphs: on for decode (the GPU default; --graphs 0 for eager)"
            + (f"; eager where the step cannot be captured: {', '.join(dict.fromkeys(eager))}" if eager else "")
            + prefill)


def decode_loop_summary(params, device: str) -> str | None:
    """One line on how tg/pg tests decode (None when no test generates); on the CPU, that the in-flight loop has
    no device to queue on (qprof.runtime.in_flight's fallback: decode, then sample)."""
    if not any(t.n_gen for t in params.tests()):
        return None
    what = {"in-flight": "in-flight (greedy tokens chained on the device, the next step queued while the host reads "
                         "each token)",
            "synced": "synced (random tokens, a synchronize after every one: llama-bench's loop)"}
    default = " (the default; --decode-loop synced for llama-bench's loop)" if params.decode_loop == ["in-flight"] else ""
    cpu = ("; the CPU runtime has no device to queue on: its in-flight loop decodes and samples greedily one step "
           "after the other" if device == "cpu" and "in-flight" in params.decode_loop else "")
    return f"decode loop: {', '.join(what[v] for v in params.decode_loop)}{default}{cpu}"


def threads_summary(params) -> str:
    from qprof.runtime.threads import default_threads, usable_cpus

    values = ",".join(str(n) for n in params.n_threads)
    default = [default_threads()]
    why = (f"default: half of the {usable_cpus()} CPUs qprof may use; -t to choose"
           if params.n_threads == default else "-t")
    return f"CPU threads: {values} ({why})"


def say(msg: str) -> None:
    click.echo(f"qprof bench: {msg}", err=True)


def results_file(option: str | None) -> tuple[Path, str]:
    """(where rows are appended, why there): --results, else $QPROF_RESULTS, else the user data dir."""
    from qprof.paths import default_results_file

    return (Path(option), "--results") if option else default_results_file()


def results_line(results: tuple[Path, str] | None) -> str:
    return f"results: {'not saved (--no-save)' if results is None else f'appending to {results[0]} ({results[1]})'}"


def ceiling_text(ceiling, unit: str) -> str:
    return f"{ceiling.value:,.1f} {unit} ({ceiling.source})" if ceiling.value else ceiling.source


def ceilings_lines(ceilings) -> list[str]:
    """What a run reads its rows against, each figure with its source (bench's stderr, a worker's log)."""
    return [f"decode floor: {ceiling_text(ceilings.bandwidth, 'GB/s read bandwidth')}",
            f"prefill roofline: {ceiling_text(ceilings.gemm, 'TFLOP/s GEMM rate')}"]


@click.command()
@click.option("-m", "--model", multiple=True, metavar="FILE|WORKLOAD",
              help="GGUF file or workload name; comma list or repeated. Default: the embedded synthetic "
                   "Mistral-7B Q4_K_M on a GPU, a tiny synthetic model on the CPU (no download).")
@click.option("-p", "--n-prompt", default="512", show_default=True, help="prompt lengths (pp tests); 0 = none")
@click.option("-n", "--n-gen", default="128", show_default=True, help="tokens to generate (tg tests); 0 = none")
@click.option("-pg", "--prompt-gen", "pg", multiple=True, metavar="PP,TG",
              help="a prompt then generation, timed together (repeat for more pairs)")
@click.option("-r", "--repetitions", default=5, show_default=True, type=int, help="timed runs per test")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="an untimed run (prompt + one token) before each test")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="default: cuda when a GPU is available, else cpu (it says which)")
@click.option("-o", "--output", "fmt", type=click.Choice(["md", "csv", "json", "jsonl", "sql"]), default="md",
              show_default=True, help="format printed on stdout")
@click.option("--results", "results_path", type=click.Path(dir_okay=False), default=None,
              help="JSONL file each finished row is appended to; its folder must exist (default: $QPROF_RESULTS, "
                   "else ~/.local/share/qprof/results.jsonl; bench's first line says which)")
@click.option("--no-save", is_flag=True, help="do not append rows to the results file")
@click.option("--mask", default="skip", show_default=True, help=f"causal mask: upload,device,skip; {SWITCH_HELP}")
@click.option("--scalar-upload", default="0", show_default=True,
              help=f"fault: a host->device scalar copy in every layer (0,1); {SWITCH_HELP}")
@click.option("--sync-every-op", default="0", show_default=True,
              help=f"fault: synchronize after every op (0,1); {SWITCH_HELP}")
@click.option("--inject", default="none", show_default=True,
              help=f"fault: none,block-dim (wrong dequant block size); {SWITCH_HELP}")
@click.option("--faults", is_flag=True,
              help="the clean run plus each fault switch on its own (mask=upload, scalar-upload, sync-every-op, "
                   "inject=block-dim) instead of a product of switch lists")
@click.option("--graphs", default=None, metavar="0|1|0,1",
              help="capture decode (and, with --prefill-graphs 1, prefill) as CUDA graphs (0,1); " + SWITCH_HELP
                   + ". Default: on a GPU, 1 for every "
                   "configuration that can be captured (as llama.cpp does), but 0 under --faults so the clean "
                   "and fault rows run the same way; 0 on the CPU. Each row's cuda_graphs says whether graphs "
                   "were actually used")
@click.option("--prefill-graphs", "prefill_graphs", default="1", show_default=True, metavar="0,1",
              help="with --graphs: replay each prefill chunk whose shape (tokens, position) ran before as a CUDA graph, "
                   "captured right after its first, eager run (1), or run every chunk eagerly (0), comma list. "
                   "Each row's prefill_graphs says whether its timed prefill replayed graphs")
@click.option("--kv-type", "kv_type", default="f32", show_default=True, metavar="f32|f16",
              help="KV cache element type(s) on the GPU, comma list: f32 (the reference) or f16 (half the bytes "
                   "decode attention reads); the CPU runtime keeps float32")
@click.option("--fused", default="1", show_default=True, metavar="0,1",
              help="decode through the fused projections (1) or one kernel per op (0), comma list")
@click.option("--pdl", default="0", show_default=True, metavar="0,1",
              help="launch decode kernels as programmatic dependents (1: each starts beside the previous one's "
                   "tail, sm_90 and newer; elsewhere a plain launch) or plainly (0), comma list. Off by default: "
                   "slower on the H200 (README)")
@click.option("--decode-loop", "decode_loop", default="in-flight", show_default=True, metavar="in-flight,synced",
              help="how tg and pg tests decode, comma list: in-flight (greedy tokens chained on the device: each step's "
                   "argmax is the next step's input and the host reads every token one step late, so the next step is "
                   "always queued) or synced (random tokens and a synchronize after every one, as llama-bench does). "
                   "pp tests do not decode; each row's decode_loop says which loop ran")
@click.option("--nvtx", default="0", show_default=True, help="NVTX ranges on every op (0,1): 1 pushes them when a tool such as nsys is attached, "
              f"or always with QPROF_NVTX=1 (to measure their cost); {SWITCH_HELP}")
@click.option("--ctx", default=None, help="KV-cache size in tokens (default: the longest test, rounded up to 256)")
@click.option("-t", "--threads", default=None, metavar="N[,N...]",
              help=f"CPU threads for torch; {SWITCH_HELP}. Default: half the CPUs qprof may use, because torch's "
                   "threads spin while waiting and more threads than idle cores slow a shared box badly")
@click.option("--bandwidth", type=float, default=None, metavar="GB/s",
              help="memory bandwidth for the decode floor (default: the streaming read measured on this GPU, "
                   "measured on first use and cached; see `qprof doctor --measure`)")
@click.option("--tflops", type=float, default=None, metavar="TFLOP/s",
              help="GEMM rate for the prefill roofline (default: the fp16 GEMM rate measured on this GPU)")
@click.option("--llama-bench", "llama_bench", default=None, metavar="PATH",
              help="also run llama.cpp's llama-bench at PATH on the same GGUF files and tests (-fa 1 -ngl 99) "
                   "and print its rows beside qprof's")
@click.option("--llama-bench-json", "llama_bench_json", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="llama.cpp's rows from a saved `llama-bench -o json` instead of running it")
@click.option("--peer-only", is_flag=True,
              help="with --llama-bench or --llama-bench-json: record llama.cpp's rows without running qprof's")
@click.option("--gpus", default=None, metavar="all|0,1,…",
              help="spread the plan over this host's GPUs: one worker process per GPU (pinned with "
                   "CUDA_VISIBLE_DEVICES), each running groups of the plan that load their model once; indices as "
                   "nvidia-smi numbers them. With one GPU or none it runs as without --gpus, and says so")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", envvar="QPROF_RAY_ADDRESS",
              metavar="[ADDRESS]",
              help="spread the plan over a running Ray cluster, one task per group asking for 1 GPU; ADDRESS is "
                   "the head's HOST:PORT, or auto (the default) for the cluster started on this host "
                   "(ray start --head); or set QPROF_RAY_ADDRESS. Needs pip install 'qprof[ray]'")
@click.option("--fail-fast", is_flag=True,
              help="with --gpus/--ray: stop every worker when a group fails (default: name it and carry on)")
def bench(model, n_prompt, n_gen, pg, repetitions, warmup, device, fmt, results_path, no_save, mask,
          scalar_upload, sync_every_op, inject, faults, graphs, prefill_graphs, nvtx, kv_type, fused, pdl, ctx, threads,
          bandwidth, tflops, llama_bench, llama_bench_json, peer_only, gpus, ray_address, fail_fast, decode_loop):
    """Benchmark prompt processing (pp) and generation (tg) like llama-bench.

    Every parameter takes a comma list; the run is their cartesian product, ordered so each model
    loads once. Rows print as they finish and are appended to the results file; Ctrl-C keeps
    every finished row.
    """
    from qprof.bench.formats import make_printer
    from qprof.bench.gpus import current_gpu, placement_fields
    from qprof.bench.peer_source import PeerSource
    from qprof.bench.progress import Progress
    from qprof.bench.record import collect_environment
    from qprof.bench.results import append_row
    from qprof.bench.runner import BenchRunner, load_spec
    from qprof.bench.telemetry import Sampler, open_reader
    from qprof.ceilings.choose import check_override, run_ceilings
    from qprof.checks import check_output_file, declared_context

    # everything a typo can break is checked before the first model loads
    check_override(bandwidth, "--bandwidth")
    check_override(tflops, "--tflops")
    if results_path is not None and not no_save:
        check_output_file(results_path, "--results")
    spreading = gpus is not None or bool(ray_address)
    if spreading and (llama_bench or llama_bench_json or peer_only):
        raise QprofError("--llama-bench, --llama-bench-json and --peer-only run in one process, not with "
                         "--gpus/--ray: record llama.cpp's rows in a separate `qprof bench` run")
    peer = PeerSource.from_options(llama_bench, llama_bench_json, peer_only)
    results = None if no_save else results_file(results_path)
    if spreading:  # the results line first, as on a plain run, then the GPUs or the cluster
        from qprof.bench.spread import choose_pool, spread_bench

        say(results_line(results))
        pool = choose_pool(gpus, ray_address, say)  # None: --gpus on a host with one GPU or none
        if pool is not None:  # workers pick their device; the plan assumes the GPU unless --device cpu
            params = build_params(model, n_prompt, n_gen, pg, repetitions, warmup, mask, scalar_upload,
                                  sync_every_op, inject, graphs, nvtx, ctx, device or "cuda", faults, threads,
                                  kv_type, fused, pdl, prefill_graphs, decode_loop)
            return spread_bench(pool, params, device, fmt, results, bandwidth, tflops, fail_fast, say)
    dev, why = pick_device(device)
    params = build_params(model, n_prompt, n_gen, pg, repetitions, warmup, mask, scalar_upload, sync_every_op,
                          inject, graphs, nvtx, ctx, dev, faults, threads, kv_type, fused, pdl, prefill_graphs,
                          decode_loop)
    params.declared_ctx = {spec: declared_context(spec) for spec in params.models}  # each -m exists, fits
    params.groups()  # the context checks: a test past a model's context is refused here, not after the others
    if not spreading:  # else said above
        say(results_line(results))
    if dev == "cuda":
        import torch

        reader, source = open_reader(torch.cuda.current_device())
    else:
        reader, source = None, "none: CPU run"
    nvml_info = reader.info() if reader else {}
    placement = placement_fields(current_gpu(dev, reader))  # qprof's rows; a peer row keeps llama-bench's
    env = collect_environment(dev, nvml_info)
    if peer_only:
        say("--peer-only: recording llama.cpp's rows; qprof's runtime does not run")
    elif dev == "cuda":
        say(f"device cuda ({env.gpu_name}; {why}): CUDA runtime; telemetry {source}")
    else:
        say(f"device cpu ({why}): CPU reference runtime; numbers check the pipeline, not GPU speed")
    if not model and not peer_only:
        say(f"no -m given: using the embedded default workload {params.models[0]!r} "
            "(synthetic, written locally, no download)")
    ceilings = run_ceilings(dev, bandwidth, tflops, nvml_info, log=say)
    if not peer_only:
        say(graphs_summary(params, dev, graphs is not None))
        loop_line = decode_loop_summary(params, dev)
        if loop_line:
            say(loop_line)
        say(threads_summary(params))
        if dev == "cpu" and any(o.label() != "clean" for o in params.option_sets()):
            say("the CPU runtime ignores the fault switches (they act on the CUDA runtime only): their rows repeat "
                "the clean run, so any difference from it is run-to-run noise (each such row says so in notes)")
    for line in ceilings_lines(ceilings):
        say(line)

    switches = params.varying()
    if peer is not None and "options" not in switches:
        switches = ["options", *switches]
    printer = make_printer(fmt, switches, dev, f"{env.build_commit} ({env.build_number})", peers=peer is not None)
    out = sys.stdout
    out.write(printer.header())
    out.flush()
    progress = Progress(0 if peer_only else params.n_rows() * (params.repetitions + int(params.warmup)))
    runner = BenchRunner(params, env, ceilings, Sampler(reader, source), load=lambda spec: load_spec(spec, log=say),
                         on_step=progress.step,
                         warn=lambda msg: (progress.clear(), click.echo(msg, err=True)))
    done: list[dict] = []
    where = "not saved (--no-save)" if results is None else f"in {results[0]}"

    def keep(row: dict) -> None:
        if results is not None:
            append_row(results[0], row)
        done.append(row)
        progress.clear()
        out.write(printer.row(row))
        out.flush()

    try:
        if not peer_only:
            for row in runner.rows():
                keep({**row, **placement})
        if peer is not None:
            loaded = runner.loaded if not peer_only else peer.models_for(params, bool(model), say)
            for row in peer.rows(params, loaded, done, ceilings, env, say):
                keep(row)
    except KeyboardInterrupt:
        progress.close()
        out.write(printer.footer())
        out.flush()
        click.echo(f"qprof: interrupted; kept {len(done)} finished row(s) {where}", err=True)
        raise SystemExit(130) from None
    except QprofError as exc:
        progress.close()
        raise QprofError(f"{exc} ({len(done)} finished row(s) kept {where})") from None
    progress.close()
    out.write(printer.footer())
    out.flush()
    runtimes = ", ".join(runner.runtime_names + (["llama-bench"] if peer is not None else []))
    say(f"{len(done)} row(s) {'' if results is None else 'appended '}{where}; runtime: {runtimes}")
