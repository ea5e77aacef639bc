"""Achieved bandwidth of the decode matvec at Mistral-7B shapes, weights cycled past L2 (a benchmark, not a test).

For every type and shape (quantized types: the kernel alone, on activations quantized beforehand as a
decode step's previous op does), `copies` distinct copies of the weight (together at least 8x the L2) are
multiplied in turn, as a decode step reads each matrix once: one matrix timed in a loop would sit in
L2 (60 MB on an H200) and flatter any kernel. Device time comes from a CUDA graph of one pass over
the copies, replayed and timed with CUDA events. GB/s counts weight + x + y bytes; % read is against
the card's streaming-read bandwidth measured first (a float16 sum over 4 GiB).
--variant "-DNAME=V ..." (repeatable) also times the batch-1 kernel compiled with those options (the
tunables of kernels/matvec_core.cuh), beside the default build.
--read also times kernels/ceiling.cu's stream_read_sum over the same copies, one launch a copy: what a
launch that only reads this many bytes reaches, so `%rd` says how near the kernel comes to that.
Run: python3 tests/gpu/bench_matvec.py [--types Q4_K,Q6_K] [--batches 1,2,4,8] [--variant OPTS] [--read]
     [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qprof.check.quant_cases import MISTRAL_SHAPES
from qprof.quant import device_layout
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.traits import ALL_TYPES, traits
from qprof.runtime.cuda.quant_ops import DeviceWeight, QVec, device_bytes, matvec, matvec_q, quantize

WORKING_SET_L2_MULTIPLE = 8


def device_weight(qtype: str, rows: int, cols: int, seed: int) -> DeviceWeight:
    """Random block bytes made on the device (fast); float16 scale fields set to 2^-6 so values stay finite; in the
    device layout (qprof.quant.device_layout), as DeviceWeight.from_bytes uploads them."""
    t = traits(qtype)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    raw = device_bytes(rows * t.row_bytes(cols))
    raw.random_(0, 256, generator=gen)
    if t.family == "float":
        raw.zero_()
    else:
        blocks = raw.view(-1, t.block_bytes)
        half = torch.tensor([2.0**-6], dtype=torch.float16).view(torch.uint8).cuda()
        for off in FP16_FIELDS[t.name]:
            blocks[:, off:off + 2] = half
        if device_layout.repacked(t.name):
            raw.copy_(device_layout.to_device(t.name, raw))
    return DeviceWeight(f"bench.{qtype}.{seed}", qtype, (rows, cols), raw, t)


def graph_us(fn, replays: int = 10) -> float:
    """Device time of one call of fn (captured once in a CUDA graph), averaged over replays."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def read_bandwidth(n_bytes: int = 4 << 30, reps: int = 5) -> float:
    a = torch.ones(n_bytes // 2, dtype=torch.float16, device="cuda")
    a.sum(dtype=torch.float32)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a.sum(dtype=torch.float32)
    end.record()
    end.synchronize()
    return n_bytes * reps / (start.elapsed_time(end) * 1e-3)


def variant_libraries(variants: list[str]):
    from qprof.runtime.cuda.driver import DEFAULT_OPTIONS, KernelLibrary

    return [(v, KernelLibrary(DEFAULT_OPTIONS + tuple(v.split()))) for v in variants]


def read_us(weights: list[DeviceWeight]) -> float:
    """Device time of stream_read_sum over one weight's bytes, cycled over the copies as the matvec is."""
    from qprof.ceilings.measure import StreamRead

    read = StreamRead(torch.cuda.get_device_properties(0).multi_processor_count)

    def one_pass():
        for w in weights:
            read(w.raw, w.n_bytes)

    return graph_us(one_pass) / len(weights)


def bench(qtype: str, rows: int, cols: int, batches: list[int], l2_bytes: int, variants=(), read=False) -> dict:
    first = device_weight(qtype, rows, cols, 0)
    copies = max(2, -(-WORKING_SET_L2_MULTIPLE * l2_bytes // first.n_bytes))
    weights = [first] + [device_weight(qtype, rows, cols, s) for s in range(1, copies)]
    row = {"type": qtype, "shape": f"{rows}x{cols}", "weight_MB": first.n_bytes / 1e6, "copies": copies}
    for b in batches:
        x, y = torch.randn(b, cols, device="cuda"), torch.empty(b, rows, device="cuda")
        xq = None if first.traits.family == "float" else quantize(x, QVec.allocate(cols, b))

        def one_pass(x=x, y=y, xq=xq):  # the matvec kernel alone: x quantized beforehand
            for w in weights:
                if xq is None:
                    matvec(w, x, y)
                else:
                    matvec_q(w, xq, y)

        us = graph_us(one_pass) / copies
        row[f"b{b}_us"] = us
        row[f"b{b}_GBps"] = (first.n_bytes + x.nbytes + y.nbytes) / (us * 1e-6) / 1e9
    if first.traits.family != "float":
        from qprof.runtime.cuda.kernels import kernel_name, matvec_launch

        x, y = torch.randn(1, cols, device="cuda"), torch.empty(1, rows, device="cuda")
        xq = quantize(x, QVec.allocate(cols, 1))
        cfg = matvec_launch(first.traits, rows)
        for i, (_, lib) in enumerate(variants):
            kern = lib.kernel("matvec", kernel_name("matvec", qtype, "b1"))

            def one_pass(lib=lib, kern=kern):
                for w in weights:
                    lib.launch(kern, cfg.grid, cfg.block, w.raw, xq.data, y, rows, cols, w.row_bytes, 0, 0.0, None,
                               None, None, shared_bytes=cfg.shared_bytes)

            row[f"v{i}_GBps"] = (first.n_bytes + x.nbytes + y.nbytes) / (graph_us(one_pass) / copies * 1e-6) / 1e9
    if read:
        row["read_us"] = read_us(weights)
        row["read_GBps"] = first.n_bytes / (row["read_us"] * 1e-6) / 1e9
    weights.clear()
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--variant", action="append", default=[], help="compile options of a batch-1 variant")
    ap.add_argument("--read", action="store_true", help="also a pure read of the same bytes, one launch a copy")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_matvec: no CUDA GPU", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    read_bps = read_bandwidth()
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.cuda.get_device_name()
    print(f"{device}: streaming read {read_bps / 1e9:.0f} GB/s (float16 sum over 4 GiB); L2 {l2 >> 20} MiB; "
          f"weights cycled over >= {WORKING_SET_L2_MULTIPLE}x L2")
    variants = variant_libraries(args.variant)
    for i, (v, _) in enumerate(variants):
        print(f"variant v{i}: {v}")
    head = f"{'type':<5} {'shape':<11} {'MB':>6} {'copies':>6}" + "".join(
        f" {f'b{b} us':>8} {f'b{b} GB/s':>8} {'%read':>5}" for b in batches) + "".join(
        f" {f'v{i} GB/s':>8}" for i in range(len(variants))) + (
        f" {'read us':>8} {'rd GB/s':>8} {'%rd':>4}" if args.read else "")
    print(head)
    rows = []
    for t in args.types.split(","):
        for r, c in MISTRAL_SHAPES:
            row = bench(t, r, c, batches, l2, variants, args.read)
            rows.append(row)
            line = f"{row['type']:<5} {row['shape']:<11} {row['weight_MB']:6.1f} {row['copies']:6d}" + "".join(
                f" {row[f'b{b}_us']:8.1f} {row[f'b{b}_GBps']:8.0f} {100 * row[f'b{b}_GBps'] * 1e9 / read_bps:5.0f}"
                for b in batches) + "".join(f" {row.get(f'v{i}_GBps', float('nan')):8.0f}"
                                           for i in range(len(variants)))
            if args.read:  # the first batch's kernel time against the read's, of the same weight bytes
                line += (f" {row['read_us']:8.1f} {row['read_GBps']:8.0f}"
                         f" {100 * row['read_us'] / row[f'b{batches[0]}_us']:4.0f}")
            print(line, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "read_Bps": read_bps, "l2_bytes": l2, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
