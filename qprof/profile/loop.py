"""The in-process profiled run: warm-up, then n_prompt prefill + n_gen decode steps under the timing listeners.

`run_workload` builds the runtime, warms up under an NVTX "warmup" range (kernel loading,
allocator growth and CUDA graph capture happen there), then runs the measured "run" range through
the shared timed loop (qprof.runtime.timed) with the timing mode's listeners and capture around
it. It returns the timings and, when decode ran as a CUDA graph, the op of every captured node.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from qprof.annotate import Annotator, RangeListener
from qprof.checks import check_context
from qprof.profile.spec import WorkloadResult, WorkloadSpec
from qprof.runtime.threads import set_threads

WARMUP_DECODE = 2


def load_model(spec_model: str):
    """A GGUFModel from a file path or a workload name (made on demand, see qprof.workloads)."""
    from qprof.model.gguf_file import load_model as load_gguf
    from qprof.workloads.resolve import resolve_model

    return load_gguf(resolve_model(spec_model))


def prompt_tokens(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    """A fixed, seed-dependent prompt of n token ids spread over the vocabulary."""
    return [(1 + (i + seed) * 7919) % n_vocab for i in range(n)]


def op_weight_bytes(model) -> dict[str, int]:
    """Op range name -> weight bytes that op reads in one decode step (the runtimes' op names)."""
    out: dict[str, int] = {}
    for name, t in model.tensors.items():
        if len(t.shape) != 2 or not name.endswith(".weight"):
            continue
        op = name[: -len(".weight")]
        out[op] = t.n_bytes // t.shape[0] if op == "token_embd" else t.n_bytes
    if model.config.tied_embeddings and "token_embd.weight" in model.tensors:
        out["output"] = model.tensors["token_embd.weight"].n_bytes
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    import platform

    return platform.processor() or platform.machine() or "cpu"


@contextmanager
def gc_paused():
    """Python's garbage collector off (collected first), as timeit does: a pause inside an op would be
    charged to that op."""
    was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def sampled_tokens(rt, params, n_gen: int) -> Callable[[object], int | None]:
    """next_token for the timed loop: sample every forward's logits, stop after n_gen decode steps."""
    count = [0]

    def next_token(logits) -> int | None:
        token = rt.sample(logits, params)
        count[0] += 1
        return token if count[0] <= n_gen else None

    return next_token


def graph_facts(rt) -> dict:
    """Whether decode ran as a CUDA graph, why not when it was asked for, and the captured nodes' ops."""
    graph = getattr(rt, "graph", None)
    replayed = graph is not None and graph.ready
    note = getattr(rt, "graph_fallback", None)
    if replayed and graph.record_error:
        note = f"the capture could not record which op added each node ({graph.record_error})"
    return {"decode_graph": replayed, "graph_note": note,
            "graph_ops": [node.as_dict() for node in graph.nodes] if replayed else [],
            "graph_pdl_edges": graph.programmatic_edges if replayed else None}


def run_workload(spec: WorkloadSpec, listeners: Sequence[RangeListener] = (),
                 capture: Callable[[], AbstractContextManager] | None = None, model=None,
                 force_nvtx: bool | None = None) -> WorkloadResult:
    """Warm up, then prefill n_prompt tokens and decode n_gen under the listeners (and capture, if given).

    NVTX ranges follow spec.options.nvtx and then qprof.annotate.nvtx_decision: pushed when a
    tool is attached, or when `force_nvtx` (else QPROF_NVTX) says so. Python's garbage collector is
    off during the measured run (collected just before), so no collection pause lands inside an op.
    spec.decode_loop "synced" samples each step's token before the next step is queued; "in-flight" chains greedy
    steps on the device, the next one queued while the host reads each token (qprof.runtime.in_flight)."""
    from qprof.runtime.base import SamplingParams, decode_weight_bytes
    from qprof.runtime.factory import create_runtime
    from qprof.runtime.in_flight import run_greedy
    from qprof.runtime.timed import timed_loop

    model = model if model is not None else load_model(spec.model)
    cfg = model.config
    annotator = Annotator(nvtx_enabled=spec.options.nvtx, force_nvtx=force_nvtx)
    n_ctx = spec.n_prompt + spec.n_gen  # the prompt's positions, then one per decode step (as bench counts them)
    check_context(n_ctx, f"-p {spec.n_prompt} + -n {spec.n_gen}", spec.model, cfg.n_ctx, f"{cfg.arch}.context_length")
    if spec.n_threads is not None:
        set_threads(spec.n_threads)
    rt = create_runtime(model, spec.device, spec.options, annotator, n_ctx=n_ctx)
    tokens = prompt_tokens(spec.n_prompt, cfg.n_vocab, spec.seed)
    params = SamplingParams()
    in_flight = spec.decode_loop == "in-flight"
    if spec.warmup:  # kernel loading, allocator growth, cuBLAS set-up and graph capture happen here, outside the run
        with annotator.run("warmup"):
            rt.reset()
            tok = rt.sample(rt.prefill(tokens), params)  # the run's prompt: the same shapes, buffers and algorithms
            if in_flight:  # the chained step's kernel loaded and the graph captured and replayed, as the run uses
                run_greedy(rt, tok, min(WARMUP_DECODE, spec.n_gen))
            else:
                for _ in range(min(WARMUP_DECODE, spec.n_gen)):
                    tok = rt.sample(rt.decode(tok), params)
            rt.synchronize()
    annotator.listeners.extend(listeners)
    # in flight: the n_gen greedy steps chained on the device from the prompt's token, as bench's default loop
    chained = (lambda first: run_greedy(rt, first, spec.n_gen)) if in_flight else None
    try:
        with gc_paused(), capture() if capture is not None else nullcontext(), annotator.run("run"):
            times = timed_loop(rt, tokens, sampled_tokens(rt, params, spec.n_gen), decode_loop=chained)
    finally:
        for lis in listeners:
            annotator.listeners.remove(lis)
    name = getattr(getattr(model, "path", None), "name", None) or cfg.name or spec.model
    return WorkloadResult(model_name=str(name), device_name=device_name(spec.device), label=spec.options.label(),
                          n_prompt=spec.n_prompt, n_gen=spec.n_gen, prefill_ns=times.prefill_ns,
                          decode_ns=times.decode_ns, weight_bytes=decode_weight_bytes(model), n_layer=cfg.n_layer,
                          op_bytes=op_weight_bytes(model), **graph_facts(rt))
