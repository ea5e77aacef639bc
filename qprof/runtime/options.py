"""Runtime switches, including the seed's faults, so each can be turned on and measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from qprof.errors import QprofError

MASK_MODES = ("upload", "device", "skip")
KV_TYPES = ("f32", "f16")
# how bench and profile decode: greedy tokens chained on the device with one in flight (qprof.runtime.in_flight), or
# a synchronize after every token (llama-bench's loop); bench's default is the first
DECODE_LOOPS = ("in-flight", "synced")
INJECT_FAULTS = ("block-dim",)


@dataclass(frozen=True)
class RuntimeOptions:
    # How the causal mask reaches attention:
    #   upload - built on the host and copied to the device on every forward (the original sin)
    #   device - built once on the device and kept there
    #   skip   - no mask for single-token decode (causality is implicit); device mask for prefill
    mask: str = "skip"
    scalar_upload: bool = False  # upload a scalar (e.g. the layer's rope position) inside every layer
    sync_every_op: bool = False  # force a device synchronize after every op
    inject: str | None = None  # "block-dim": launch dequant kernels with a block size their type doesn't expect
    nvtx: bool = True  # NVTX ranges on run/phase/token/layer/op
    cuda_graphs: bool = False  # capture the decode step as a CUDA graph where the runtime supports it
    # with cuda_graphs: a prefill chunk whose shape has run before replays its CUDA graph (captured right after
    # its first, eager run). Off unless asked (bench asks): a one-off prompt would only pay for the capture
    prefill_graphs: bool = False
    fused: bool = True  # decode through the fused projections (norm+QKV+RoPE+KV, norm+gate+up+SwiGLU, +add)
    kv_type: str = "f32"  # KV cache element type on the GPU: f32 (the reference) or f16
    # decode kernels launched as programmatic dependents (sm_90): each starts beside the previous one's tail.
    # Off by default: on the H200 it measured slower (tg128 Q4_K_M 396.8 vs 415.1 tok/s, results/h200/)
    pdl: bool = False

    def __post_init__(self) -> None:
        if self.mask not in MASK_MODES:
            raise QprofError(f"unknown mask mode {self.mask!r}; choose from {', '.join(MASK_MODES)}")
        if self.kv_type not in KV_TYPES:
            raise QprofError(f"unknown KV cache type {self.kv_type!r}; choose from {', '.join(KV_TYPES)}")
        if self.inject is not None and self.inject not in INJECT_FAULTS:
            raise QprofError(f"unknown fault {self.inject!r}; choose from {', '.join(INJECT_FAULTS)}")

    @property
    def is_clean(self) -> bool:
        return self.mask != "upload" and not self.scalar_upload and not self.sync_every_op and self.inject is None

    def label(self) -> str:
        """Short human label such as 'clean' or 'mask=upload,sync'."""
        parts = []
        if self.mask != "skip":
            parts.append(f"mask={self.mask}")
        if self.scalar_upload:
            parts.append("scalar-upload")
        if self.sync_every_op:
            parts.append("sync-every-op")
        if self.inject:
            parts.append(f"inject={self.inject}")
        return ",".join(parts) or "clean"

    def as_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> RuntimeOptions:
        return replace(self, **changes)


def gpu_only_note(options: RuntimeOptions, device: str) -> str | None:
    """What to say when GPU-only switches are set on the CPU runtime, which ignores them; None otherwise.

    qprof runs such a configuration (so the pipeline around it is exercised) and says plainly that it
    is the clean run again, so any difference from the clean numbers is run-to-run noise.
    """
    if device != "cpu" or options.label() == "clean":
        return None
    return (f"{options.label()}: the CPU runtime ignores this switch (it acts on the CUDA runtime only), so this is "
            "the clean run again and any difference from clean is noise")
