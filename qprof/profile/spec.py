"""What to profile and what came back: the workload spec, its timings, and one profiled configuration."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pandas as pd

from qprof.errors import QprofError
from qprof.runtime.options import DECODE_LOOPS, RuntimeOptions

TIMINGS = ("events", "blocking", "nsys", "torch")
DEVICES = ("cuda", "cpu")


def options_from_flags(mask: str = "skip", scalar_upload: bool = False, sync_every_op: bool = False,
                       inject: str | None = None, nvtx: bool = True, cuda_graphs: bool = False) -> RuntimeOptions:
    """RuntimeOptions from the CLI flags (RuntimeOptions validates the values and names bad ones)."""
    return RuntimeOptions(mask=mask, scalar_upload=scalar_upload, sync_every_op=sync_every_op, inject=inject,
                          nvtx=nvtx, cuda_graphs=cuda_graphs)


# The clean configuration and every fault switch, in the order `qprof profile --faults` shows them.
FAULT_SWITCHES: tuple[tuple[str, dict], ...] = (
    ("clean", {}),
    ("mask=upload", {"mask": "upload"}),
    ("mask=device", {"mask": "device"}),
    ("scalar-upload", {"scalar_upload": True}),
    ("sync-every-op", {"sync_every_op": True}),
    ("inject=block-dim", {"inject": "block-dim"}),
)


@dataclass(frozen=True)
class WorkloadSpec:
    model: str
    device: str = "cuda"
    n_prompt: int = 128
    n_gen: int = 32
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    seed: int = 0
    warmup: bool = True
    n_threads: int | None = None  # torch's CPU threads; None leaves them as they are
    decode_loop: str = "synced"  # or "in-flight": greedy steps chained on the device (qprof.runtime.in_flight)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise QprofError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if self.decode_loop not in DECODE_LOOPS:
            raise QprofError(f"unknown decode loop {self.decode_loop!r}; choose from {', '.join(DECODE_LOOPS)}")
        if self.n_prompt < 1:
            raise QprofError(f"--n-prompt must be at least 1, got {self.n_prompt}")
        if self.n_gen < 1:
            raise QprofError(f"--n-gen must be at least 1, got {self.n_gen}")

    def to_json(self) -> str:
        d = asdict(self)
        d["options"] = self.options.as_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> WorkloadSpec:
        d = json.loads(text)
        d["options"] = RuntimeOptions(**d["options"])
        return cls(**d)

    def with_options(self, **changes) -> WorkloadSpec:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["options"] = self.options.with_(**changes)
        return WorkloadSpec(**d)


@dataclass
class WorkloadResult:
    model_name: str
    device_name: str
    label: str  # RuntimeOptions.label(): "clean", "mask=upload", ...
    n_prompt: int
    n_gen: int
    prefill_ns: int  # prefill + first sample, device synchronized
    decode_ns: int  # n_gen decode steps with their samples, device synchronized
    weight_bytes: int  # bytes of weights one decode token reads (qprof.runtime.base.decode_weight_bytes)
    n_layer: int
    op_bytes: dict[str, int] = field(default_factory=dict)  # op range name -> weight bytes it reads
    decode_graph: bool = False  # decode ran as a replayed CUDA graph
    graph_note: str | None = None  # why decode ran eagerly although graphs were asked for
    graph_pdl_edges: int | None = None  # the captured step's programmatic (PDL) edges, where the driver says
    graph_ops: list[dict] = field(default_factory=list)  # the captured graph's nodes in order, each with its op

    @property
    def pp_tok_s(self) -> float:
        return self.n_prompt / (self.prefill_ns * 1e-9) if self.prefill_ns > 0 else 0.0

    @property
    def tg_tok_s(self) -> float:
        return self.n_gen / (self.decode_ns * 1e-9) if self.decode_ns > 0 else 0.0

    def floor_tok_s(self, peak_Bps: float) -> float:
        """The memory-traffic bound on decode: bandwidth / bytes of weights per token."""
        return peak_Bps / self.weight_bytes if self.weight_bytes else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(pp_tok_s=self.pp_tok_s, tg_tok_s=self.tg_tok_s)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WorkloadResult:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)


@dataclass
class ProfileRun:
    """One profiled configuration: its table (restricted to the run), timings and what was stated on the way."""

    spec: WorkloadSpec
    timing: str  # the mode that produced the table (after any fallback)
    table: pd.DataFrame
    result: WorkloadResult
    notes: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.options.label()
