"""One decode matvec (and the fused gate+up) at Mistral-7B shape, launched a few times for Nsight Compute.

Run under ncu to read occupancy, stall reasons and memory throughput of the kernels:
  ncu --section SpeedOfLight --section Occupancy --section WarpStateStats python3 tests/gpu/ncu_matvec.py Q4_K
"""

from __future__ import annotations

import sys

import torch

from qprof.runtime.cuda.fused_ops import gate_up
from qprof.runtime.cuda.quant_ops import QVec, matvec_q, quantize
from tests.gpu.bench_matvec import device_weight


def main(qtype: str = "Q4_K") -> None:
    rows, cols = 14336, 4096
    w, w2 = device_weight(qtype, rows, cols, 0), device_weight(qtype, rows, cols, 1)
    x = torch.randn(1, cols, device="cuda")
    xq = quantize(x, QVec.allocate(cols))
    y = torch.empty(1, rows, device="cuda")
    act_q = QVec.allocate(rows)
    for _ in range(3):
        matvec_q(w, xq, y)
        gate_up(w, w2, xq, 1e-5, y, act_q=act_q)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(*sys.argv[1:])
