"""What the host's turn between decode tokens costs (a benchmark, not a test).

`qprof bench` synchronizes after every token, as a generation loop must before it samples and as
llama-bench does; the device then idles while the host returns from the wait, takes the next token,
writes the step input and launches the next graph replay. This times, in one process and alternately:
- back to back: `decode` called without a wait between tokens, so the host queues a token while the
  device runs the one before (the device's own time per token, as bench_decode_ablation.py measures);
- synchronized: `decode` then a synchronize per token, bench's loop, split into the host's time inside
  `decode` (queueing) and in the wait;
- in flight: `decode_greedy` over the same steps, greedy tokens chained on the device with the next step
  queued while the host reads each token (bench's default `--decode-loop in-flight`: argmax, the token's copy
  and its event wait included);
and prints the difference of the first two, the host's turn, per token, and the host's time in the two calls
decode makes to the driver: the step input's launch (ops.step_set) and the graph's replay.

    python3 tests/gpu/bench_host_turn.py -m mistral-7b-q4_k_m [--steps 128] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import torch

from qprof.model.gguf_file import load_model
from qprof.runtime.cuda import forward
from qprof.runtime.cuda.forward import CudaRuntime
from qprof.runtime.options import RuntimeOptions
from qprof.workloads import resolve_model


def back_to_back_us(rt: CudaRuntime, steps: int) -> float:
    """Wall µs per token of `steps` decodes queued without a wait, from an empty cache (one wait at the end)."""
    rt.reset()
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    for _ in range(steps):
        rt.decode(1)
    rt.synchronize()
    return (time.perf_counter_ns() - t0) / 1e3 / steps


def synchronized_us(rt: CudaRuntime, steps: int) -> tuple[float, float, float]:
    """(µs per token, of which inside decode, of which in the wait) with a synchronize after every token."""
    rt.reset()
    torch.cuda.synchronize()
    queued = waited = 0
    t0 = time.perf_counter_ns()
    for _ in range(steps):
        a = time.perf_counter_ns()
        rt.decode(1)
        b = time.perf_counter_ns()
        rt.synchronize()
        queued += b - a
        waited += time.perf_counter_ns() - b
    total = time.perf_counter_ns() - t0
    return total / 1e3 / steps, queued / 1e3 / steps, waited / 1e3 / steps


def in_flight_us(rt: CudaRuntime, steps: int) -> float:
    """Wall µs per token of `steps` greedy steps with one token in flight, every token read back, from an empty
    cache (the last token's wait, then a synchronize)."""
    rt.reset()
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    for _ in rt.decode_greedy(1, steps):
        pass
    rt.synchronize()
    return (time.perf_counter_ns() - t0) / 1e3 / steps


def timed_calls(rt: CudaRuntime) -> Counter:
    """Wrap the step input's launch and the graph's replay so that each call's host ns add up in the counter."""
    spent: Counter = Counter()

    def timing(name, fn):
        def call(*args, **kwargs):
            t = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter_ns() - t
        return call

    forward.ops.step_set = timing("step_set", forward.ops.step_set)
    rt.graph.replay = timing("replay", rt.graph.replay)
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="mistral-7b-q4_k_m")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nvtx", choices=["on", "off"], default="off", help="NVTX ranges (off: as qprof bench runs)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_host_turn: no CUDA GPU", file=sys.stderr)
        return 2
    model = load_model(resolve_model(args.model))
    nvtx = args.nvtx == "on"
    rt = CudaRuntime(model, RuntimeOptions(nvtx=nvtx, cuda_graphs=True), n_ctx=args.steps + 8)
    rt.decode(1)  # eager, then captured
    rt.decode(1)  # the first replay
    for _ in rt.decode_greedy(1, 2):  # the chained step's kernel loaded before any timing
        pass
    rt.synchronize()
    print(f"{torch.cuda.get_device_name()}: {args.model}, decode positions 0..{args.steps - 1}, CUDA graph, "
          f"NVTX {args.nvtx}, wall µs per token")
    spent = timed_calls(rt)
    print(f"{'rep':>3} {'back to back':>12} {'synced':>8} {'in decode':>9} {'in wait':>8} {'host turn':>9} "
          f"{'step_set':>8} {'replay':>8} {'in flight':>9}")
    for rep in range(args.reps):
        free = back_to_back_us(rt, args.steps)
        spent.clear()
        synced, queued, waited = synchronized_us(rt, args.steps)
        parts = [spent[k] / 1e3 / args.steps for k in ("step_set", "replay")]
        chained = in_flight_us(rt, args.steps)
        print(f"{rep:3d} {free:12.1f} {synced:8.1f} {queued:9.1f} {waited:8.1f} {synced - free:9.1f} "
              f"{parts[0]:8.1f} {parts[1]:8.1f} {chained:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
