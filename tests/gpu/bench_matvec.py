"""Achieved bandwidth of the quantized kernels at Mistral-7B shapes (a benchmark, not a test).

For every type and shape: matvec at batch 1 and 8 (GB/s of weight + x + y bytes), dequantize to
float16 (GB/s read + written) and the prefill matmul at n=512 (TFLOP/s). Device time comes from
CUDA-graph replays of 20 launches timed with CUDA events, so Python's launch cost (reported
separately as host us/call) does not hide the kernel. Batch 1 is also timed with the matvec
compiled for 8-value thread steps (-DQPROF_MATVEC_WIDE_RUN=8) to compare against the default 16.
A device-to-device copy gives the card's practical bandwidth beside the 3.03 TB/s nominal figure.
Run: python3 tests/gpu/bench_matvec.py [--types Q4_K,Q6_K] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from qprof.check.quant_cases import MISTRAL_SHAPES
from qprof.quant.dequant import FP16_FIELDS
from qprof.quant.traits import ALL_TYPES, traits
from qprof.runtime.cuda.quant_ops import DeviceWeight, dequantize, matmul, matvec

NOMINAL_BPS = 3.03e12


def device_weight(qtype: str, rows: int, cols: int) -> DeviceWeight:
    """Random block bytes made on the device (fast); float16 scale fields set to 2^-6 so values stay finite."""
    t = traits(qtype)
    raw = torch.randint(0, 256, (rows * t.row_bytes(cols),), dtype=torch.uint8, device="cuda")
    if t.family == "float":
        raw.zero_()
    else:
        blocks = raw.view(-1, t.block_bytes)
        half = torch.tensor([2.0**-6], dtype=torch.float16).view(torch.uint8).cuda()
        for off in FP16_FIELDS[t.name]:
            blocks[:, off:off + 2] = half
    return DeviceWeight(f"bench.{qtype}", qtype, (rows, cols), raw, t)


def device_us(fn, reps: int = 20, replays: int = 5) -> float:
    """Device time of one call: `reps` calls captured in a CUDA graph, replayed `replays` times."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * replays)


def host_us(fn, calls: int = 200) -> float:
    """Host time per call while the launches queue (Python + driver launch cost)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) * 1e6 / calls


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    a = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * n_bytes / (device_us(lambda: b.copy_(a), 5, 4) * 1e-6)


def narrow_run_library():
    from qprof.runtime.cuda.driver import DEFAULT_OPTIONS, KernelLibrary

    return KernelLibrary(DEFAULT_OPTIONS + ("-DQPROF_MATVEC_WIDE_RUN=8",))


def bench(qtype: str, rows: int, cols: int, narrow) -> dict:
    from qprof.runtime.cuda.kernels import kernel_name, matvec_launch

    w = device_weight(qtype, rows, cols)
    x8 = torch.randn(8, cols, device="cuda")
    y8 = torch.empty(8, rows, device="cuda")
    row = {"type": qtype, "shape": f"{rows}x{cols}", "weight_MB": w.n_bytes / 1e6}
    for b in (1, 8):
        x, y = x8[:b].contiguous(), y8[:b].contiguous()
        us = device_us(lambda x=x, y=y: matvec(w, x, y))
        row[f"matvec_b{b}_us"] = us
        row[f"matvec_b{b}_GBps"] = (w.n_bytes + x.nbytes + y.nbytes) / (us * 1e-6) / 1e9
    x1, y1 = x8[:1].contiguous(), y8[:1].contiguous()
    row["matvec_host_us"] = host_us(lambda: matvec(w, x1, y1))
    kern, cfg = narrow.kernel("matvec", kernel_name("matvec", qtype, "b1")), matvec_launch(w.traits, rows)
    us = device_us(lambda: narrow.launch(kern, cfg.grid, cfg.block, w.raw, x1, y1, rows, cols, w.row_bytes))
    row["matvec_b1_run8_GBps"] = (w.n_bytes + x1.nbytes + y1.nbytes) / (us * 1e-6) / 1e9
    w16 = torch.empty(rows, cols, dtype=torch.float16, device="cuda")
    us = device_us(lambda: dequantize(w, w16), 5, 2)
    row["dequant_f16_GBps"] = (w.n_bytes + w16.nbytes) / (us * 1e-6) / 1e9
    x512, y512 = torch.randn(512, cols, device="cuda"), torch.empty(512, rows, device="cuda")
    us = device_us(lambda: matmul(w, x512, y512, w16.view(-1)), 5, 2)
    row["matmul512_us"] = us
    row["matmul512_TFLOPs"] = 2 * 512 * rows * cols / (us * 1e-6) / 1e12
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_matvec: no CUDA GPU", file=sys.stderr)
        return 2
    from qprof.runtime.cuda.quant_ops import matmul_path

    copy_bps = copy_bandwidth()
    narrow = narrow_run_library()
    rows = [bench(t, r, c, narrow) for t in args.types.split(",") for r, c in MISTRAL_SHAPES]
    device = torch.cuda.get_device_name()
    print(f"{device}: device-to-device copy {copy_bps / 1e9:.0f} GB/s; nominal {NOMINAL_BPS / 1e9:.0f} GB/s; "
          f"matmul path: {matmul_path()}")
    head = (f"{'type':<5} {'shape':<11} {'MB':>6} {'b1 us':>7} {'b1 GB/s':>8} {'%copy':>5} {'run8 GB/s':>9} "
            f"{'b8 us':>7} {'b8 GB/s':>8} {'host us':>7} {'deq16 GB/s':>10} {'mm512 us':>8} {'TFLOP/s':>7}")
    print(head)
    for r in rows:
        print(f"{r['type']:<5} {r['shape']:<11} {r['weight_MB']:6.1f} {r['matvec_b1_us']:7.1f} "
              f"{r['matvec_b1_GBps']:8.0f} {100 * r['matvec_b1_GBps'] * 1e9 / copy_bps:5.0f} "
              f"{r['matvec_b1_run8_GBps']:9.0f} {r['matvec_b8_us']:7.1f} {r['matvec_b8_GBps']:8.0f} "
              f"{r['matvec_host_us']:7.1f} {r['dequant_f16_GBps']:10.0f} {r['matmul512_us']:8.1f} "
              f"{r['matmul512_TFLOPs']:7.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "copy_Bps": copy_bps, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
