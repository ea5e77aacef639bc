"""Test helpers for the bench: a small in-memory GGUFModel, a recording fake runtime, a fake NVML module."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch

from qprof.model.config import ModelConfig
from qprof.model.gguf_file import GGUFModel, TensorInfo


def fake_model(n_layer: int = 2, n_embd: int = 32, n_vocab: int = 50, qtype: str = "Q8_0",
               row_bytes: int = 34, name: str = "fake model", file_type: int | None = 7) -> GGUFModel:
    """A GGUFModel with byte-sized tensors (content unused): enough for sizes, bytes/token and labels."""
    cfg = ModelConfig(arch="llama", n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=4, n_head_kv=2,
                      head_dim=8, n_ff=64, rms_eps=1e-5, rope_theta=1e4, rope_dim=8, n_ctx=256, name=name)
    tensors = {}

    def add(tname: str, rows: int, qt: str = qtype, rb: int = row_bytes, cols: int = 32):
        tensors[tname] = TensorInfo(tname, qt, (rows, cols), np.zeros((rows, rb), dtype=np.uint8))

    add("token_embd.weight", n_vocab)
    add("output.weight", n_vocab)
    add("output_norm.weight", 1, "F32", 128)
    for i in range(n_layer):
        add(f"blk.{i}.attn_q.weight", n_embd)
        add(f"blk.{i}.ffn_down.weight", n_embd)
    meta = {"general.name": name, "tokenizer.ggml.bos_token_id": 1}
    if file_type is not None:
        meta["general.file_type"] = file_type
    return GGUFModel(path=Path("/models/fake.gguf"), config=cfg, tensors=tensors, metadata=meta)


class FakeRuntime:
    """Records every call; each decode/prefill takes `op_s` seconds so timings are positive and ordered."""

    instances: ClassVar[list[FakeRuntime]] = []

    def __init__(self, model, device="cpu", options=None, annotator=None, n_ctx=None, op_s: float = 0.0):
        self.config = model.config
        self.device = device
        self.options = options
        self.n_ctx = n_ctx
        self.n_past = 0
        self.op_s = op_s
        self.calls: list[tuple] = []
        self.k_cache = torch.zeros(1, dtype=torch.float16)
        FakeRuntime.instances.append(self)

    def reset(self):
        self.n_past = 0
        self.calls.append(("reset",))

    def prefill(self, tokens, all_logits=False):
        assert self.n_past + len(tokens) <= self.n_ctx, "prompt overflows the KV cache"
        self.calls.append(("prefill", list(tokens)))
        self.n_past += len(tokens)
        time.sleep(self.op_s)
        return torch.zeros(self.config.n_vocab)

    def decode(self, token):
        assert self.n_past < self.n_ctx, "decode overflows the KV cache"
        assert 0 <= token < self.config.n_vocab
        self.calls.append(("decode", token))
        self.n_past += 1
        time.sleep(self.op_s)
        return torch.zeros(self.config.n_vocab)

    def sample(self, logits, params):
        return 0

    def synchronize(self):
        self.calls.append(("sync",))


class FakeStepGraph:
    """qprof.runtime.cuda.graphs.StepGraph on the CPU. capture() runs the step once only to learn what it
    returns, then fills that with NaN (a real capture runs nothing: its outputs hold garbage until a replay);
    replay() runs the step again and writes the result into those same outputs, as a replayed graph does."""

    def __init__(self) -> None:
        self.step = None
        self.out: torch.Tensor | None = None
        self.replays = 0

    def capture(self, step):
        self.step, self.out = step, step()
        if self.out is not None:
            self.out.fill_(float("nan"))
        return self.out

    def replay(self) -> None:
        fresh = self.step()
        if self.out is not None:
            self.out.copy_(fresh)
        self.replays += 1


class FakeCudaRuntime(FakeRuntime):
    """FakeRuntime with CudaRuntime's graph bookkeeping: .graph when graphs were asked for and the options
    allow capture, else a warning and .graph_fallback (as qprof/runtime/cuda/forward.py does); with prefill
    graphs, every prefill (one chunk) goes through a real PrefillGraphs cache of FakeStepGraphs."""

    def __init__(self, model, device="cuda", options=None, annotator=None, n_ctx=None, op_s: float = 0.0):
        import warnings

        from qprof.runtime.cuda.graphs import graph_blocker
        from qprof.runtime.cuda.prefill_graph import PrefillGraphs, prefill_graph_blocker

        super().__init__(model, device, options, annotator, n_ctx, op_s)
        self.graph = None
        self.graph_fallback = graph_blocker(options) if options is not None and options.cuda_graphs else None
        if self.graph_fallback:
            warnings.warn(f"CUDA graphs off: {self.graph_fallback}; decode runs eagerly", stacklevel=2)
        elif options is not None and options.cuda_graphs:
            self.graph = object()
        self.prefill_graphs = None
        if options is not None and prefill_graph_blocker(options) is None:
            self.prefill_graphs = PrefillGraphs(new_graph=FakeStepGraph, device="cpu")

    def prefill(self, tokens, all_logits=False):
        if self.prefill_graphs is not None:
            from qprof.runtime.cuda.prefill_graph import PrefillShape

            self.prefill_graphs.new_prompt()
            shape = PrefillShape(len(tokens), self.n_past, all_logits, True)
            self.prefill_graphs.run(shape, list(tokens), lambda ids: torch.zeros(1, self.config.n_vocab))
        return super().prefill(tokens, all_logits)


def fake_env(device: str = "cpu", gpu_name: str | None = None):
    from qprof.bench.record import Environment

    return Environment(device=device, backends="CUDA" if device == "cuda" else "CPU", build_commit="abc123",
                       build_number=7, cpu_info="Fake CPU", gpu_info=gpu_name or "", gpu_name=gpu_name,
                       driver="550.1" if device == "cuda" else None, cuda_version="12.4" if device == "cuda" else None,
                       cuda_driver=None, torch_version="2.x", qprof_version="0.1.0", n_threads=2)


class NVMLError(Exception):
    pass


def fake_nvml(reasons: int = 0, fail: tuple[str, ...] = (), sm_clocks=(1980, 1755), init_error: bool = False):
    """A stand-in for the pynvml module: SM clock alternates through sm_clocks; `fail` names functions that raise."""
    state = {"i": 0}

    def maybe(name, value):
        def fn(*args):
            if name in fail:
                raise NVMLError(f"{name} not supported")
            return value(*args) if callable(value) else value
        return fn

    def sm_or_mem(handle, which):
        if which == 0:
            state["i"] += 1
            return sm_clocks[state["i"] % len(sm_clocks)]
        return 2619

    def init():
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    return SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_SM=0, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlDeviceGetHandleByUUID=maybe("nvmlDeviceGetHandleByUUID", "handle"),
        nvmlDeviceGetHandleByIndex=maybe("nvmlDeviceGetHandleByIndex", "handle"),
        nvmlDeviceGetClockInfo=maybe("nvmlDeviceGetClockInfo", sm_or_mem),
        nvmlDeviceGetMaxClockInfo=maybe("nvmlDeviceGetMaxClockInfo", 2619),
        nvmlDeviceGetMemoryBusWidth=maybe("nvmlDeviceGetMemoryBusWidth", 5120),
        nvmlDeviceGetPowerUsage=maybe("nvmlDeviceGetPowerUsage", 350_000),
        nvmlDeviceGetTemperature=maybe("nvmlDeviceGetTemperature", 61),
        nvmlDeviceGetMemoryInfo=maybe("nvmlDeviceGetMemoryInfo", SimpleNamespace(used=5 * 2**30)),
        nvmlDeviceGetCurrentClocksEventReasons=maybe("nvmlDeviceGetCurrentClocksEventReasons", reasons),
        nvmlSystemGetDriverVersion=maybe("nvmlSystemGetDriverVersion", b"580.65.06"),
        nvmlSystemGetCudaDriverVersion=maybe("nvmlSystemGetCudaDriverVersion", 13000),
        nvmlDeviceGetName=maybe("nvmlDeviceGetName", "NVIDIA H100 80GB HBM3"),
    )


def bench_row(**over) -> dict:
    """A complete, plausible bench row (for printers, results and compare tests)."""
    from qprof.bench.record import ordered

    row = {"build_commit": "abc123", "build_number": 7, "cpu_info": "Fake CPU", "gpu_info": "NVIDIA H100 80GB HBM3",
           "backends": "CUDA", "model_filename": "/cache/mistral-7b-q4_k_m.gguf", "model_type": "mistral Q4_K_M",
           "model_size": 4_368_439_296, "model_n_params": 7_241_732_096, "n_batch": 1, "n_ubatch": 1,
           "n_threads": 2, "type_k": "f16", "type_v": "f16", "n_gpu_layers": 32, "flash_attn": False,
           "n_prompt": 0, "n_gen": 128, "test_time": "2026-01-01T00:00:00Z", "avg_ns": 1_000_000_000,
           "stddev_ns": 10_000_000, "avg_ts": 128.0, "stddev_ts": 1.5, "samples_ns": [1_000_000_000] * 3,
           "samples_ts": [128.0] * 3, "schema": 1, "test": "tg128", "model": "mistral-7b-q4_k_m",
           "quant": "Q4_K_M", "device": "cuda", "runtime": "CudaRuntime", "gpu_name": "NVIDIA H100 80GB HBM3",
           "mask": "skip", "scalar_upload": False, "sync_every_op": False, "inject": "none", "cuda_graphs": False,
           "nvtx": False, "options": "clean", "bytes_per_token": 4_000_000_000, "bandwidth_GBps": 3030.0,
           "floor_ts": 757.5, "pct_of_floor": 16.9}
    row.update(over)
    return ordered(row)
