"""Achieved bandwidth of the quantized kernels at Mistral-7B shapes (a benchmark, not a test).

For every type and shape: matvec at batch 1 and 8 (GB/s of weight + x + y bytes), dequantize to
float16 (GB/s read + written) and the prefill matmul at n=512 (TFLOP/s), timed with CUDA events
over repeated launches. A device-to-device copy of the same byte count gives the card's practical
bandwidth beside the 3.03 TB/s nominal figure. Run: python3 tests/gpu/bench_matvec.py [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys

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


def time_us(fn, iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def copy_bandwidth(n_bytes: int = 1 << 30) -> float:
    a = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * n_bytes / (time_us(lambda: b.copy_(a), 20) * 1e-6)


def bench(qtype: str, rows: int, cols: int, iters: int) -> dict:
    w = device_weight(qtype, rows, cols)
    x8 = torch.randn(8, cols, device="cuda")
    y8 = torch.empty(8, rows, device="cuda")
    row = {"type": qtype, "shape": f"{rows}x{cols}", "weight_MB": w.n_bytes / 1e6}
    for b in (1, 8):
        x, y = x8[:b].contiguous(), y8[:b].contiguous()
        us = time_us(lambda x=x, y=y: matvec(w, x, y), iters)
        row[f"matvec_b{b}_us"] = us
        row[f"matvec_b{b}_GBps"] = (w.n_bytes + x.nbytes + y.nbytes) / (us * 1e-6) / 1e9
    w16 = torch.empty(rows, cols, dtype=torch.float16, device="cuda")
    us = time_us(lambda: dequantize(w, w16), max(3, iters // 4))
    row["dequant_f16_GBps"] = (w.n_bytes + w16.nbytes) / (us * 1e-6) / 1e9
    x512, y512 = torch.randn(512, cols, device="cuda"), torch.empty(512, rows, device="cuda")
    us = time_us(lambda: matmul(w, x512, y512, w16.view(-1)), max(3, iters // 4))
    row["matmul512_us"] = us
    row["matmul512_TFLOPs"] = 2 * 512 * rows * cols / (us * 1e-6) / 1e12
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_matvec: no CUDA GPU", file=sys.stderr)
        return 2
    from qprof.runtime.cuda.quant_ops import matmul_path

    copy_bps = copy_bandwidth()
    rows = [bench(t, r, c, args.iters) for t in args.types.split(",") for r, c in MISTRAL_SHAPES]
    device = torch.cuda.get_device_name()
    print(f"{device}: device-to-device copy {copy_bps / 1e9:.0f} GB/s; nominal {NOMINAL_BPS / 1e9:.0f} GB/s; "
          f"matmul path: {matmul_path()}")
    head = (f"{'type':<5} {'shape':<11} {'MB':>7} {'mv b1 us':>9} {'b1 GB/s':>8} {'%nom':>5} {'mv b8 us':>9} "
            f"{'b8 GB/s':>8} {'deq16 GB/s':>10} {'mm512 us':>9} {'TFLOP/s':>8}")
    print(head)
    for r in rows:
        print(f"{r['type']:<5} {r['shape']:<11} {r['weight_MB']:7.1f} {r['matvec_b1_us']:9.1f} "
              f"{r['matvec_b1_GBps']:8.0f} {100 * r['matvec_b1_GBps'] * 1e9 / NOMINAL_BPS:5.0f} "
              f"{r['matvec_b8_us']:9.1f} {r['matvec_b8_GBps']:8.0f} {r['dequant_f16_GBps']:10.0f} "
              f"{r['matmul512_us']:9.1f} {r['matmul512_TFLOPs']:8.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "copy_Bps": copy_bps, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
