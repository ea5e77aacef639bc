"""CudaRuntime: the full llama/Mistral forward on the GPU with quantized weights used in place.

Weights stay as GGUF block bytes on the device (DeviceWeight); norms are float32; activations,
KV cache and logits are float32 and never leave the device. Decode runs on static buffers and reads
its token and position from a device int32 pair written by a kernel launch (step_set), so a step has no
host<->device copy and no host sync, and can be captured as a CUDA graph (RuntimeOptions.cuda_graphs); with
prefill_graphs too, a prefill chunk whose shape ran before replays its graph (prefill_graph.py). sample()
reads back one int32; decode_greedy chains greedy steps on the device, one token in flight (greedy_chain.py).
Op names and families follow the CPU reference (qprof.runtime.cpu); the residual adds are their own ops here
(family "add").

The fault switches of RuntimeOptions act here: mask (upload | device | skip, see kv_cache.MaskPolicy),
scalar_upload (the layer's position copied host->device inside every layer and read by RoPE and
the KV write), sync_every_op (a checked device synchronize after every op) and inject
("block-dim", handed to the quantized matmul of the prefill path).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch

from qprof.annotate import NULL_ANNOTATOR, Annotator
from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams, TokenChecks
from qprof.runtime.cpu import LAYER_MATRICES as MATRICES
from qprof.runtime.cuda import ops
from qprof.runtime.cuda.decode_buffers import DecodeBuffers, LayerWeights, norm_weight
from qprof.runtime.cuda.driver import (
    DEFAULT_OPTIONS,
    KERNEL_DEFINES_ENV,
    KernelLibrary,
    require_cuda,
    synchronize,
)
from qprof.runtime.cuda.fused_ops import QkvLaunch, RopeSpec, gate_up, gate_up_supported, qkv_supported
from qprof.runtime.cuda.graphs import StepGraph, graph_blocker
from qprof.runtime.cuda.greedy_chain import TokenRing, greedy_chain
from qprof.runtime.cuda.kv_cache import KvCache, MaskPolicy
from qprof.runtime.cuda.memory import bytes_needed, check_fits, memory_message
from qprof.runtime.cuda.prefill_graph import PrefillGraphs, PrefillShape, prefill_graph_blocker, upload_ids
from qprof.runtime.cuda.quant_ops import DeviceWeight, get_rows, matmul, matvec, matvec_q, quantize
from qprof.runtime.options import RuntimeOptions
from qprof.runtime.sampling import Sampler, check_params

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds activation memory for long prompts


def _types(*weights: DeviceWeight) -> str:
    """The quant types of a fused op's matrices, e.g. 'Q4_K' or 'Q4_K+Q6_K'."""
    return "+".join(dict.fromkeys(w.qtype for w in weights))


class CudaRuntime(TokenChecks):
    """Runtime (qprof.runtime.base) on one CUDA GPU, with qprof's PTX kernels."""

    device = "cuda"

    def __init__(self, model, options: RuntimeOptions | None = None, annotator: Annotator | None = None,
                 n_ctx: int | None = None):
        require_cuda()
        cfg = model.config
        self.model, self.config, self.n_past = model, cfg, 0
        self.n_ctx = int(n_ctx or min(cfg.n_ctx, 4096))
        if self.n_ctx <= 0:
            raise QprofError(f"context size must be positive, got {self.n_ctx}")
        self.options, self.annotator = options or RuntimeOptions(), annotator or NULL_ANNOTATOR
        self.shape = ops.AttentionShape(cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.sliding_window or 0)
        extra = KernelLibrary.get().options[len(DEFAULT_OPTIONS):]
        if extra:  # said, and kept in every bench row's notes: these are not the shipped kernels
            warnings.warn(f"kernels built with {KERNEL_DEFINES_ENV}={' '.join(extra)} (an experiment)", stacklevel=2)
        need = bytes_needed(model, self.n_ctx, self.options, PREFILL_CHUNK)
        check_fits(model, need)
        try:
            self._load()
        except torch.cuda.OutOfMemoryError:
            raise QprofError(memory_message(model, need, "ran out of GPU memory while loading")) from None
        self._sampler: Sampler | None = None
        self._token_ring: TokenRing | None = None  # decode_greedy's pinned slots and events, made on first use
        self._op = self._op_synced if self.options.sync_every_op else self.annotator.op
        self.graph: StepGraph | None = None  # the decode step
        self.graph_fallback: str | None = None
        if self.options.cuda_graphs:
            self.graph_fallback = graph_blocker(self.options)
            if self.graph_fallback:
                warnings.warn(f"CUDA graphs off: {self.graph_fallback}; decode runs eagerly", stacklevel=2)
            else:
                self.graph = StepGraph()
        blocked = prefill_graph_blocker(self.options)  # else prefill chunks are captured and replayed by shape
        self.prefill_graphs = None if blocked else PrefillGraphs(self._reserve_scratch)

    # ---------------------------------------------------------------- loading

    def _load(self) -> None:
        cfg, tensors = self.config, self.model.tensors
        self.weights: dict[str, DeviceWeight] = {}
        for name, info in tensors.items():
            if len(info.shape) == 2:
                self.weights[name] = DeviceWeight.from_tensor_info(info)
        self.token_embd = self.weights["token_embd.weight"]
        out_name = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
        self.output = self.weights[out_name]
        self.output_norm = norm_weight(tensors["output_norm.weight"])
        self.layers = [
            LayerWeights(norm_weight(tensors[f"blk.{i}.attn_norm.weight"]),
                         norm_weight(tensors[f"blk.{i}.ffn_norm.weight"]),
                         {m: self.weights[f"blk.{i}.{m}.weight"] for m in MATRICES})
            for i in range(cfg.n_layer)
        ]
        self.cache = KvCache.allocate(cfg.n_layer, self.n_ctx, cfg.kv_dim, self.options.kv_type)
        self._kv = [self.cache.layer(i) for i in range(cfg.n_layer)]  # views made once, not per step
        self.masks = MaskPolicy(self.options.mask, self.n_ctx, self.shape.window)
        self.buf = DecodeBuffers.allocate(cfg, self.shape, self.n_ctx)
        self._mm_scratch: torch.Tensor | None = None
        self.fused_blocker = self._fused_blocker()
        if self.fused_blocker is None:
            rope = RopeSpec(cfg.head_dim, cfg.rope_dim, cfg.rope_theta)
            b = self.buf
            rope_cs = ops.rope_table(self.n_ctx, cfg.rope_dim, cfg.rope_theta)  # one for every layer
            self._qkv = [QkvLaunch(lw.mats["attn_q"], lw.mats["attn_k"], lw.mats["attn_v"], b.xq, cfg.rms_eps, b.q,
                                   *self._kv[i], rope, rope_cs=rope_cs) for i, lw in enumerate(self.layers)]

    def _fused_blocker(self) -> str | None:
        """Why decode runs the unfused ops (one kernel per op), or None for the fused projections."""
        if not self.options.fused:
            return "--fused 0"
        b = self.buf
        if b.xq is None or b.attnq is None or b.actq is None:
            return "a width that is not a multiple of 32 (the quantized activations' block)"
        for i, lw in enumerate(self.layers):
            m = lw.mats
            why = qkv_supported(m["attn_q"], m["attn_k"], m["attn_v"]) or gate_up_supported(m["ffn_gate"], m["ffn_up"])
            if why is None and (m["attn_output"].traits.family == "float" or m["ffn_down"].traits.family == "float"):
                why = "a float-typed projection (the fused kernels read quantized blocks)"
            if why:
                return f"layer {i}: {why}"
        if self.output.traits.family == "float":
            return "a float-typed output matrix (the fused norm reads quantized blocks)"
        return None

    # ---------------------------------------------------------------- protocol

    def reset(self) -> None:
        """Empty the cache: attention only reads positions below n_past, so nothing is cleared."""
        self.n_past = 0
        self._sampler = None

    def synchronize(self) -> None:
        synchronize()

    def prefill(self, tokens: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        tokens = self._check_tokens(tokens)
        chunks = []
        if self.prefill_graphs is not None:
            self.prefill_graphs.new_prompt()
        with self.annotator.phase("prefill"):
            for c0 in range(0, len(tokens), PREFILL_CHUNK):
                part = tokens[c0:c0 + PREFILL_CHUNK]
                last = c0 + len(part) == len(tokens)
                logits = self._prefill_chunk(part, all_logits, last)
                if logits is not None:
                    chunks.append(logits)
        return torch.cat(chunks) if all_logits else chunks[-1][-1]

    def decode(self, token: int) -> torch.Tensor:
        """Logits [n_vocab] of `token` at position n_past: a view of a static buffer, valid until the next call."""
        (token,) = self._check_tokens([token])
        self._queue_step(partial(ops.step_set, self.buf.step, token))
        return self.buf.logits[0]

    def decode_greedy(self, first_token: int, n: int) -> Iterator[int]:
        """n greedy decode steps from first_token, one token in flight (qprof.runtime.in_flight; greedy_chain.py)."""
        if self._token_ring is None:
            self._token_ring = TokenRing()
        return greedy_chain(self, self._token_ring, first_token, n)

    def sample(self, logits: torch.Tensor, params: SamplingParams) -> int:
        check_params(params)
        if params.greedy:
            b = self.buf
            with self.annotator.op("sample", "sample"):
                ops.argmax(logits.contiguous(), b.token_out)
            # the copy back and the wait for it as ops of their own: a profiler tells the copy from the sync
            with self.annotator.op("token_readback", "copy"):
                b.token_host.copy_(b.token_out, non_blocking=True)
            with self.annotator.op("token_wait", "sync", syncs=True):
                synchronize()
            return int(b.token_host[0])
        if self._sampler is None or self._sampler.params != params:
            self._sampler = Sampler(params, device=logits.device)
        with self.annotator.op("sample", "sample", syncs=True):  # the sampler reads its draw back inside
            return int(self._sampler(logits))

    # ---------------------------------------------------------------- internals

    @contextmanager
    def _op_synced(self, name: str, family: str, qtype: str | None = None, **meta):
        with self.annotator.op(name, family, qtype, **meta):
            yield
        synchronize()  # the sync-every-op fault: after the op's range, so it shows as its own wait

    def _layer_pos(self, pos: torch.Tensor | None, host_pos: int) -> torch.Tensor | None:
        """The position RoPE and the KV write read: the step's, or (scalar_upload fault) a fresh upload."""
        if self.options.scalar_upload:
            with self._op("scalar_upload", "copy", syncs=True):  # a pageable copy: torch waits for it
                return torch.tensor([host_pos], dtype=torch.int32, device="cuda")
        return pos

    def _queue_step(self, write_input: Callable[[int], None]) -> None:
        """Queue one decode step at position n_past: `write_input(pos)` writes the step's device input (step_set from
        a host token, or step_chain from the last argmax's), then the graph replays (or the step runs eagerly and,
        with graphs, is captured). Nothing waits: logits land in self.buf.logits in stream order."""
        with self.annotator.phase("decode"), self.annotator.token(self.n_past):
            with self._op("step_input", "step"):
                write_input(self.n_past)
            if self.graph is not None and self.graph.ready:
                with self.annotator.op("decode_graph", "graph"):
                    self.graph.replay()
            else:
                self._decode_step()
                if self.graph is not None:
                    self._capture()
        self.n_past += 1

    def _capture(self) -> None:
        annotator, op = self.annotator, self._op
        # the step's ops still open their ranges while it is captured, so each node is recorded with its op;
        # the timing listeners stay out (their kernels would be captured into the graph)
        self.annotator = self.graph.recording_annotator(annotator)
        self._op = self.annotator.op
        try:
            self.graph.capture(self._decode_step)
        finally:
            self.annotator, self._op = annotator, op

    def _decode_step(self) -> None:
        """One token through the model; reads token and position from self.buf.step only."""
        with KernelLibrary.get().programmatic_launches(self.options.pdl):  # captured with the step
            if self.fused_blocker is None:
                self._decode_step_fused()
            else:
                self._decode_step_unfused()

    def _decode_step_fused(self) -> None:
        """Five launches a layer: norm+QKV+RoPE+KV write, attention (which quantizes its output),
        attn_output+add, norm+gate+up+SwiGLU, ffn_down+add. Each projection's epilogue quantizes what the
        next one reads; the output norm rides in the output matvec."""
        b, op, sh, eps = self.buf, self._op, self.shape, self.config.rms_eps
        pos = b.step[1:2]
        mask = self.masks.for_forward(self.n_past, 1)
        with op("token_embd", "get_rows", self.token_embd.qtype):
            get_rows(self.token_embd, b.step[0:1], b.x)
        with op("embd_quantize", "quantize"):
            quantize(b.x, b.xq, self.layers[0].attn_norm)
        for i, layer in enumerate(self.layers):
            p, w = f"blk.{i}.", layer.mats
            k_cache, v_cache = self._kv[i]
            next_norm = self.layers[i + 1].attn_norm if i + 1 < len(self.layers) else self.output_norm
            with self.annotator.layer(i):
                lpos = self._layer_pos(pos, self.n_past)
                with op(p + "attn_qkv", "matvec", _types(w["attn_q"], w["attn_k"], w["attn_v"])):
                    self._qkv[i](lpos)
                with op(p + "attention", "attention"):
                    ops.attention_decode(b.q, k_cache, v_cache, b.attn, sh, b.scratch, pos=lpos, mask=mask,
                                         out_q=b.attnq.data)
                with op(p + "attn_output", "matvec", w["attn_output"].qtype):
                    matvec_q(w["attn_output"], b.attnq, b.x, residual=b.x, out_q=b.xq, next_norm=layer.ffn_norm)
                with op(p + "ffn_gate_up", "matvec", _types(w["ffn_gate"], w["ffn_up"])):
                    gate_up(w["ffn_gate"], w["ffn_up"], b.xq, eps, b.act, act_q=b.actq)
                with op(p + "ffn_down", "matvec", w["ffn_down"].qtype):
                    matvec_q(w["ffn_down"], b.actq, b.x, residual=b.x, out_q=b.xq, next_norm=next_norm)
        with op("output", "matvec", self.output.qtype):
            matvec_q(self.output, b.xq, b.logits, norm_eps=eps)

    def _decode_step_unfused(self) -> None:
        """The decode step one op per kernel (float-typed weights, or --fused 0 for comparison)."""
        cfg, b, op, sh = self.config, self.buf, self._op, self.shape
        pos = b.step[1:2]
        mask = self.masks.for_forward(self.n_past, 1)
        with op("token_embd", "get_rows", self.token_embd.qtype):
            get_rows(self.token_embd, b.step[0:1], b.x)
        for i, layer in enumerate(self.layers):
            p, w = f"blk.{i}.", layer.mats
            k_cache, v_cache = self._kv[i]
            with self.annotator.layer(i):
                lpos = self._layer_pos(pos, self.n_past)
                with op(p + "attn_norm", "rmsnorm"):
                    ops.rmsnorm(b.x, layer.attn_norm, b.xn, cfg.rms_eps)
                for name, out in (("attn_q", b.q), ("attn_k", b.k), ("attn_v", b.v)):
                    with op(p + name, "matvec", w[name].qtype):
                        matvec(w[name], b.xn, out)
                with op(p + "rope", "rope"):
                    ops.rope(b.q, b.k, 1, sh.n_head, sh.n_head_kv, sh.head_dim, cfg.rope_dim, cfg.rope_theta,
                             pos=lpos)
                with op(p + "kv_write", "kv_write"):
                    ops.kv_write(b.k, b.v, k_cache, v_cache, 1, pos=lpos)
                with op(p + "attention", "attention"):
                    ops.attention_decode(b.q, k_cache, v_cache, b.attn, sh, b.scratch, pos=lpos, mask=mask)
                self._project_add(p + "attn_output", "matvec", w["attn_output"], b.attn, b.tmp, b.x)
                with op(p + "ffn_norm", "rmsnorm"):
                    ops.rmsnorm(b.x, layer.ffn_norm, b.xn, cfg.rms_eps)
                for name, out in (("ffn_gate", b.gate), ("ffn_up", b.up)):
                    with op(p + name, "matvec", w[name].qtype):
                        matvec(w[name], b.xn, out)
                with op(p + "swiglu", "swiglu"):
                    ops.swiglu(b.gate, b.up, b.act)
                self._project_add(p + "ffn_down", "matvec", w["ffn_down"], b.act, b.tmp, b.x)
        with op("output_norm", "rmsnorm"):
            ops.rmsnorm(b.x, self.output_norm, b.xn, cfg.rms_eps)
        with op("output", "matvec", self.output.qtype):
            matvec(self.output, b.xn, b.logits)

    def _project(self, name: str, family: str, w: DeviceWeight, x: torch.Tensor, out: torch.Tensor) -> None:
        with self._op(name, family, w.qtype):
            if family == "matvec":
                matvec(w, x, out)
            else:
                matmul(w, x, out, self._scratch(w), inject=self.options.inject)

    def _project_add(self, name: str, family: str, w: DeviceWeight, x: torch.Tensor, tmp: torch.Tensor,
                     residual: torch.Tensor) -> None:
        """residual += w @ x: the projection, then the residual add as its own op."""
        self._project(name, family, w, x, tmp)
        with self._op(name.replace("attn_output", "attn_add").replace("ffn_down", "ffn_add"), "add"):
            ops.add(residual, tmp, residual)

    def _scratch(self, w: DeviceWeight) -> torch.Tensor:
        """One float16 buffer, grown to the largest matrix, for the prefill matmul's dequantized weights."""
        n = w.shape[0] * w.shape[1]
        if self._mm_scratch is None or self._mm_scratch.numel() < n:
            self._mm_scratch = torch.empty(n, dtype=torch.float16, device="cuda")
        return self._mm_scratch[:n].view(w.shape[0], w.shape[1])

    def _reserve_scratch(self) -> None:
        """The scratch at its largest before a prefill chunk is captured: the graph keeps the address it saw."""
        mats = [w for lw in self.layers for w in lw.mats.values()] + [self.output]
        self._scratch(max(mats, key=lambda w: w.rows * w.cols))

    def _prefill_chunk(self, tokens: list[int], all_logits: bool, last: bool) -> torch.Tensor | None:
        """One chunk at position n_past: its CUDA graph replayed where its shape ran before, else eagerly (and
        captured, see prefill_graph.py); eagerly always while a profiler watches the ranges (a replay has none)."""
        pos0 = self.n_past
        forward = partial(self._prefill_forward, pos0=pos0, all_logits=all_logits, last=last)
        if self.prefill_graphs is not None and not self.annotator.active:
            logits = self.prefill_graphs.run(PrefillShape(len(tokens), pos0, all_logits, last), tokens, forward)
        else:
            logits = forward(upload_ids(tokens))
        self.n_past = pos0 + len(tokens)
        return logits

    def _prefill_forward(self, ids: torch.Tensor, pos0: int, all_logits: bool, last: bool) -> torch.Tensor | None:
        """The chunk of token ids (int32 on the device) at positions pos0..: reads and writes device memory only."""
        cfg, sh, op = self.config, self.shape, self._op
        n = int(ids.shape[0])

        def f32(width: int) -> torch.Tensor:
            return torch.empty(n, width, device="cuda")

        x, xn, q, k, v, attn, tmp = (f32(cfg.n_embd), f32(cfg.n_embd), f32(cfg.q_dim), f32(cfg.kv_dim),
                                     f32(cfg.kv_dim), f32(cfg.q_dim), f32(cfg.n_embd))
        gate, up, act = f32(cfg.n_ff), f32(cfg.n_ff), f32(cfg.n_ff)
        mask = self.masks.for_forward(pos0, n)
        with op("token_embd", "get_rows", self.token_embd.qtype):
            get_rows(self.token_embd, ids, x)
        for i, layer in enumerate(self.layers):
            p, w = f"blk.{i}.", layer.mats
            k_cache, v_cache = self._kv[i]
            with self.annotator.layer(i):
                lpos = self._layer_pos(None, pos0)
                with op(p + "attn_norm", "rmsnorm"):
                    ops.rmsnorm(x, layer.attn_norm, xn, cfg.rms_eps)
                for name, out in (("attn_q", q), ("attn_k", k), ("attn_v", v)):
                    self._project(p + name, "matmul", w[name], xn, out)
                with op(p + "rope", "rope"):
                    ops.rope(q, k, n, sh.n_head, sh.n_head_kv, sh.head_dim, cfg.rope_dim, cfg.rope_theta,
                             pos=lpos, pos0=pos0)
                with op(p + "kv_write", "kv_write"):
                    ops.kv_write(k, v, k_cache, v_cache, n, pos=lpos, pos0=pos0)
                with op(p + "attention", "attention"):
                    if mask is None and i == 0:  # a chunk past position 0 (or a window) needs a causal mask: once
                        mask = ops.prefill_mask(pos0, n, sh, "cuda")
                    ops.attention_prefill(q, k_cache, v_cache, attn, n, sh, pos0, mask=mask)
                self._project_add(p + "attn_output", "matmul", w["attn_output"], attn, tmp, x)
                with op(p + "ffn_norm", "rmsnorm"):
                    ops.rmsnorm(x, layer.ffn_norm, xn, cfg.rms_eps)
                self._project(p + "ffn_gate", "matmul", w["ffn_gate"], xn, gate)
                self._project(p + "ffn_up", "matmul", w["ffn_up"], xn, up)
                with op(p + "swiglu", "swiglu"):
                    ops.swiglu(gate, up, act)
                self._project_add(p + "ffn_down", "matmul", w["ffn_down"], act, tmp, x)
        if not (all_logits or last):
            return None
        rows = x if all_logits else x[-1:]
        normed = xn[: rows.shape[0]]
        with op("output_norm", "rmsnorm"):
            ops.rmsnorm(rows, self.output_norm, normed, cfg.rms_eps)
        logits = torch.empty(rows.shape[0], cfg.n_vocab, device="cuda")
        # one row goes through the decode matvec: dequantizing the whole output matrix for it costs more
        self._project("output", "matmul" if all_logits else "matvec", self.output, normed, logits)
        return logits
