"""The ceilings measured on the GPU at hand: the streaming read reads every word once, and no figure beats
the memory bus."""

from __future__ import annotations

import pytest


@pytest.mark.gpu
def test_measure_on_this_gpu_reads_every_word_and_stays_under_the_datasheet():
    import torch

    from qprof.bench.telemetry import open_reader
    from qprof.ceilings.card import current_card
    from qprof.ceilings.measure import measure_card

    reader, _ = open_reader(torch.cuda.current_device())
    info = reader.info() if reader else {}
    card = current_card(torch.cuda.current_device(), info)
    c = measure_card(card)  # raises if the read kernel's block sums do not add up to the buffer's sum
    assert c.card == card and c.read_GBps > 100 and c.copy_GBps > 100
    assert c.gemm_fp16_TFLOPS > 1 and c.gemm_bf16_TFLOPS > 1
    assert c.best["read_GBps"] >= c.read_GBps
    if info.get("peak_bandwidth_GBps"):  # a streaming read cannot beat the memory bus
        assert c.read_GBps <= 1.02 * info["peak_bandwidth_GBps"]
    assert "x the" in c.method["read"] and "L2" in c.method["read"]
    # the read at each launch size: measured (its buffers' sums checked), under the bus, never far above the
    # streaming read of a whole GiB, and not slower at the largest size than at the smallest
    from qprof.ceilings.read_sizes import READ_SIZES, curve_of

    curve = curve_of(c.read_by_size_GBps)
    assert sorted(curve) == sorted(READ_SIZES), c.method.get("read by size")
    assert all(0 < g <= 1.05 * c.read_GBps for g in curve.values()), curve
    assert curve[max(curve)] >= curve[min(curve)], curve
