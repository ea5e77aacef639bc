"""The fused CUDA decode step against the CPU reference on the tiny synthetic models, token by token
(no SmolLM2 needed): a layer whose attention merged stale or missing splits, or a projection fed the
wrong vector, moves the logits far past the 16-bit activations' error."""

from __future__ import annotations

import pytest
import torch

from qprof.runtime.options import RuntimeOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]
PROMPT = [1, 15, 27, 3, 99, 4, 8, 61]
N_DECODE = 8
LOGITS_NMSE = 1e-3  # 16-bit quantized activations against the float reference (measured well below, printed)


@pytest.mark.parametrize("name", ["tiny-q4_k_m", "tiny-q8_0", "tiny-q6_k", "tiny-swa-q4_k_m"])
def test_fused_graph_decode_follows_the_cpu_reference(name):
    from qprof.model.gguf_file import load_model
    from qprof.runtime.cpu import CpuRuntime
    from qprof.runtime.cuda.forward import CudaRuntime
    from qprof.workloads import resolve_model

    model = load_model(resolve_model(name, log=None))
    gpu = CudaRuntime(model, options=RuntimeOptions(cuda_graphs=True), n_ctx=64)
    cpu = CpuRuntime(model, n_ctx=64)
    assert gpu.fused_blocker is None
    got, want = gpu.prefill(PROMPT).float().cpu(), cpu.prefill(PROMPT).float()
    worst = 0.0
    for _ in range(N_DECODE + 1):
        nmse = float(((got - want) ** 2).sum() / (want**2).sum())
        worst = max(worst, nmse)
        assert nmse <= LOGITS_NMSE, f"{name}: logits NMSE {nmse:.3e} at position {gpu.n_past}"
        token = int(torch.argmax(want))
        got, want = gpu.decode(token).float().cpu(), cpu.decode(token).float()
    print(f"\n{name}: worst logits NMSE {worst:.2e} over {N_DECODE} graph decode steps")
    assert gpu.graph is not None and gpu.graph.replays >= N_DECODE - 2
