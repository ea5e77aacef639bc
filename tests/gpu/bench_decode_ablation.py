"""What each decode op costs inside the replayed CUDA graph, without a profiler (a benchmark, not a test).

The profiler times every kernel, but twice a kernel that got faster under it (decode attention in one
launch, the fused QKV at two CTAs per SM) did not make tg128 faster. This measures the other way round:
the fused decode step is captured whole, then once more with one op's launches left out of every
layer, and each graph is replayed and timed with CUDA events; an op's cost is the step time it takes
away. The values an ablated step computes are wrong (an op's output is missing), but no kernel's time
depends on the values, only on shapes and the position, which every variant walks alike.

    python3 tests/gpu/bench_decode_ablation.py -m mistral-7b-q4_k_m [--steps 128] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

import torch

from qprof.model.gguf_file import load_model
from qprof.runtime.cuda import forward
from qprof.runtime.cuda.forward import CudaRuntime
from qprof.runtime.options import RuntimeOptions
from qprof.workloads import resolve_model

OPS = ("attn_qkv", "attention", "attn_output", "ffn_gate_up", "ffn_down")


@contextmanager
def without(rt: CudaRuntime, op: str | None):
    """The decode step with `op`'s launch left out of every layer (None: the whole step)."""
    saved = (rt._qkv, forward.ops.attention_decode, forward.gate_up, forward.matvec_q)

    def skip(*_args, **_kwargs):
        return None

    def matvec_unless(name: str):
        def launch(w, *args, **kwargs):
            return None if name in w.name else saved[3](w, *args, **kwargs)
        return launch

    if op == "attn_qkv":
        rt._qkv = [skip] * len(rt._qkv)
    elif op == "attention":
        forward.ops.attention_decode = skip
    elif op == "ffn_gate_up":
        forward.gate_up = skip
    elif op in ("attn_output", "ffn_down"):
        forward.matvec_q = matvec_unless(f".{op}.")
    try:
        yield
    finally:
        rt._qkv, forward.ops.attention_decode, forward.gate_up, forward.matvec_q = saved


def step_us(rt: CudaRuntime, steps: int) -> float:
    """Mean device time of a decode step over positions 0 .. steps - 1, replaying a freshly captured graph."""
    graph_class = getattr(forward, "StepGraph", None) or forward.DecodeGraph  # the name before 9ba889a
    rt.graph = graph_class()
    rt.reset()
    rt.decode(1)  # eager, then captured
    rt.decode(1)  # the first replay
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        rt.decode(1)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="mistral-7b-q4_k_m")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_decode_ablation: no CUDA GPU", file=sys.stderr)
        return 2
    rt = CudaRuntime(load_model(resolve_model(args.model)), RuntimeOptions(nvtx=False, cuda_graphs=True),
                     n_ctx=args.steps + 8)
    if rt.fused_blocker is not None:
        print(f"bench_decode_ablation: the model runs unfused ({rt.fused_blocker})", file=sys.stderr)
        return 2
    n_layer = rt.config.n_layer
    print(f"{torch.cuda.get_device_name()}: {args.model}, decode positions 0..{args.steps - 1}, {args.reps} reps, "
          f"graph replays timed with CUDA events")
    print(f"{'left out':<12} {'step us':>9} {'op us/step':>11} {'op us/layer':>12}")
    for rep in range(args.reps):
        full = step_us(rt, args.steps)
        print(f"{'(none)':<12} {full:9.1f}", flush=True)
        for op in OPS:
            with without(rt, op):
                t = step_us(rt, args.steps)
            print(f"{op:<12} {t:9.1f} {full - t:11.1f} {(full - t) / n_layer:12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
