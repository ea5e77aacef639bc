"""What one decode-attention launch costs inside a decode step, at Mistral-7B's shape (a benchmark, not a test).

A CUDA graph holds LAYERS rounds of (an L2 flush, then attention_decode on that layer's own KV cache), as a
decode step reads each layer's cache once after the weights have pushed it out of L2. The same graph without
the attention launches is timed too; the difference per round is what attention adds to a step, its launch
gap included. --variant "-DNAME=V ..." (repeatable) times the kernels built with those options (their tuning
macros) beside the default build.
--fetch also times kernels/ceiling.cu's fetch probes (the same multiply-adds as 64 KB of straight-line code
or as a 2 KB loop, one warp per SM) with and without the flush before each: what fetching code costs.
Each build's second line is the KV bytes read (positions 0..p) over that time.
Run: python3 tests/gpu/bench_attention.py [--positions 8,64,128,512] [--n-ctx 512] [--kv f32] [--flush-mb 128]
     [--splits N] [--variant OPTS]
     [--fetch]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qprof.runtime.cuda import ops
from qprof.runtime.cuda.driver import DEFAULT_OPTIONS, KernelLibrary
from qprof.runtime.cuda.quant_ops import QVec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repo root, for tests.gpu
from tests.gpu.bench_matvec import graph_us

LAYERS = 32
FLUSH_BYTES = 128 << 20  # more than the H200's 60 MB L2


def attention_cost_us(pos: int, n_ctx: int, kv: torch.dtype, shape: ops.AttentionShape,
                      flush_bytes: int = FLUSH_BYTES, n_split: int | None = None) -> tuple[float, float]:
    """(µs attention adds per layer, µs of the flush alone per layer) at position pos."""
    gen = torch.Generator(device="cuda").manual_seed(pos)
    caches = [(torch.randn(n_ctx, shape.kv_dim, device="cuda", generator=gen).to(kv),
               torch.randn(n_ctx, shape.kv_dim, device="cuda", generator=gen).to(kv)) for _ in range(LAYERS)]
    q = torch.randn(shape.n_head * shape.head_dim, device="cuda", generator=gen)
    out = torch.empty_like(q)
    out_q = QVec.allocate(q.numel())
    scratch = ops.DecodeScratch.allocate(shape, n_ctx, n_split=n_split)
    pos_t = torch.tensor([pos], dtype=torch.int32, device="cuda")
    flush = torch.empty(max(flush_bytes // 4, 1), device="cuda")

    def rounds(with_attention: bool):
        for kc, vc in caches:
            if flush_bytes:
                flush.fill_(1.0)
            if with_attention:
                ops.attention_decode(q, kc, vc, out, shape, scratch, pos=pos_t, out_q=out_q.data)

    both = graph_us(lambda: rounds(True), 20)
    alone = graph_us(lambda: rounds(False), 20) if flush_bytes else 0.0  # without a flush: nothing to take off
    return (both - alone) / LAYERS, alone / LAYERS


def fetch_probe_us(flushed: bool) -> dict[str, float]:
    """µs per launch of each fetch probe (grid: one warp per SM), after an L2 flush each time or back to back."""
    lib = KernelLibrary.get()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out, flush = torch.empty(32, device="cuda"), torch.empty(FLUSH_BYTES // 4, device="cuda")
    res = {}
    for name in ("fetch_straight", "fetch_loop"):
        kernel = lib.kernel("ceiling", name)

        def rounds(with_probe: bool, kernel=kernel):
            for _ in range(LAYERS):
                if flushed:
                    flush.fill_(1.0)
                if with_probe:
                    lib.launch(kernel, (sms,), (32,), out, 1.0, -1.0)  # never: the sum stays positive

        res[name] = (graph_us(lambda: rounds(True), 20) - (graph_us(lambda: rounds(False), 20) if flushed else 0.0)) / LAYERS
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", default="8,64,128,512")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--kv", choices=("f32", "f16"), default="f32")
    ap.add_argument("--variant", action="append", default=[], help="compile options of a variant build")
    ap.add_argument("--fetch", action="store_true", help="also time the instruction-fetch probes")
    ap.add_argument("--splits", type=int, help="splits a KV head (default: ops.decode_splits for --n-ctx)")
    ap.add_argument("--flush-mb", type=int, default=FLUSH_BYTES >> 20,
                    help="L2 flush before each launch, MB (0: none; the layers' caches still cycle through HBM, "
                         "with no dirty lines to write back, as in a decode step)")
    args = ap.parse_args()
    shape = ops.AttentionShape(32, 8, 128, 0)  # Mistral-7B
    kv = torch.float32 if args.kv == "f32" else torch.float16
    positions = [int(p) for p in args.positions.split(",")]
    builds = [("default", None)] + [(v, DEFAULT_OPTIONS + tuple(v.split())) for v in args.variant]
    n_split = args.splits or ops.decode_splits(args.n_ctx, shape.n_head_kv)
    print(f"{torch.cuda.get_device_name()}: decode attention 32/8x128, {args.kv} KV, n_ctx {args.n_ctx} "
          f"(grid 8 x {n_split}); µs it adds per layer after a {args.flush_mb} MB L2 flush")
    print("build".ljust(40) + "".join(f"pos {p}".rjust(10) for p in positions))
    for name, options in builds:
        KernelLibrary._instance = KernelLibrary(options)
        costs = [attention_cost_us(p, args.n_ctx, kv, shape, args.flush_mb << 20, n_split) for p in positions]
        print(name[:40].ljust(40) + "".join(f"{c:10.2f}" for c, _ in costs))
        # the K and V rows of positions 0..p it must read, over the time it adds (its launch gap included)
        kv_bytes = [2 * (p + 1) * shape.kv_dim * kv.itemsize for p in positions]
        print("  KV read, GB/s".ljust(40) + "".join(f"{b / (c * 1e3):10.0f}" for b, (c, _) in zip(kv_bytes, costs)))
    KernelLibrary._instance = None  # the fetch probes below: the default build
    print(f"(the flush alone: {costs[0][1]:.2f} µs a layer)")
    if args.fetch:
        for flushed in (True, False):
            probe = fetch_probe_us(flushed)
            print(f"fetch probes, {'after the flush' if flushed else 'back to back'}: " +
                  ", ".join(f"{k} {v:.2f} µs" for k, v in probe.items()))


if __name__ == "__main__":
    main()
