"""Programmatic dependent launch on the GPU: the decode step's kernels launched as programmatic dependents
give exactly the logits of plain launches (the same kernels and math; only when they start differs), eager
and as a CUDA graph, on every quant type of the tiny synthetic models; the captured graph holds programmatic
edges on sm_90 and none with --no-pdl."""

from __future__ import annotations

import functools

import pytest
import torch

from qprof.runtime.options import RuntimeOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)"),
]
PROMPT = [1, 15, 27, 3, 99, 4, 8, 61]
N_DECODE = 6


def tiny_workloads() -> list[str]:
    from qprof.workloads import all_workloads

    return [name for name in all_workloads() if name.startswith("tiny-")]


@functools.cache
def loaded(name: str):
    from qprof.model.gguf_file import load_model
    from qprof.workloads import resolve_model

    return load_model(resolve_model(name, log=None))


def greedy_logits(name: str, **options) -> tuple[torch.Tensor, object]:
    """The prompt's last logits and N_DECODE greedy steps' logits, stacked, and the runtime."""
    from qprof.runtime.cuda.forward import CudaRuntime

    rt = CudaRuntime(loaded(name), options=RuntimeOptions(**options), n_ctx=64)
    out = [rt.prefill(PROMPT).clone()]
    for _ in range(N_DECODE):
        out.append(rt.decode(int(torch.argmax(out[-1]))).clone())
    return torch.stack(out).cpu(), rt


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("name", tiny_workloads())
def test_programmatic_launches_give_the_same_logits(name, graphs):
    plain, _ = greedy_logits(name, pdl=False, cuda_graphs=graphs)
    dependent, rt = greedy_logits(name, pdl=True, cuda_graphs=graphs)
    assert torch.isfinite(plain).all()
    assert torch.equal(plain, dependent), f"max |diff| {float((plain - dependent).abs().max()):.3e}"
    if graphs:
        assert rt.graph is not None and rt.graph.ready


def test_the_captured_step_holds_programmatic_edges_only_with_pdl():
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 or newer")
    name = "tiny-q4_k_m"
    _, on = greedy_logits(name, pdl=True, cuda_graphs=True)
    _, off = greedy_logits(name, pdl=False, cuda_graphs=True)
    print(f"\n{name}: {on.graph.programmatic_edges} programmatic edges with pdl, {off.graph.programmatic_edges} without")
    assert off.graph.programmatic_edges == 0
    # every kernel of the fused step after the first waits on the one before: most edges are programmatic, the
    # five of each layer (qkv, attention, attn_output, gate_up, ffn_down) at least
    assert on.graph.programmatic_edges is not None and on.graph.programmatic_edges >= 5 * loaded(name).config.n_layer
