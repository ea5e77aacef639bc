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
