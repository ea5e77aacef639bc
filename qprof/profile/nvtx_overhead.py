"""`qprof profile --nvtx-overhead`: decode tok/s with NVTX ranges off, on (as users run it) and forced on.

All three modes run on one runtime, the mode changing every token so drift and position hit all
alike; one range's host cost is timed in each mode too, so the measured slowdown can be set
against the one the range count predicts.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from qprof.annotate import Annotator
from qprof.errors import QprofError
from qprof.profile.loop import gc_paused, load_model, prompt_tokens
from qprof.profile.spec import WorkloadSpec

OVERHEAD_PROMPT = 8  # the short prompt before each round of --nvtx-overhead
NVTX_MODES = (("off", False, None), ("on", True, None), ("forced", True, True))  # (name, --nvtx, force)
RANGE_COST_CALLS = 20_000


@dataclass
class NvtxOverhead:
    """Decode tok/s with NVTX ranges on (as a user runs: pushed only if a tool is attached), forced on, and off,
    and what one range costs the host in each case."""

    on_tok_s: list[float]  # --nvtx as given to users: ranges only when a tool is attached
    off_tok_s: list[float]  # --no-nvtx
    forced_tok_s: list[float] = field(default_factory=list)  # QPROF_NVTX=1: every range pushed through nvtx
    tool_attached: bool = False  # whether an NVTX tool was attached to this process (then "on" pushes ranges)
    range_ns: dict[str, float] = field(default_factory=dict)  # mode -> host ns of one op range (enter + exit)
    ranges_per_token: int = 0  # ranges one decode step opens

    @staticmethod
    def _median(xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    @property
    def on(self) -> float:
        return self._median(self.on_tok_s)

    @property
    def off(self) -> float:
        return self._median(self.off_tok_s)

    @property
    def forced(self) -> float:
        return self._median(self.forced_tok_s)

    def _slower_pct(self, tok_s: float) -> float:
        return 100.0 * (self.off - tok_s) / self.off if self.off and tok_s else 0.0

    @property
    def overhead_pct(self) -> float:
        """How much slower decode is with ranges on (as users run it), in % of the NVTX-off tok/s."""
        return self._slower_pct(self.on)

    @property
    def forced_overhead_pct(self) -> float:
        """How much slower decode is with every range pushed through nvtx (QPROF_NVTX=1)."""
        return self._slower_pct(self.forced)

    def predicted_pct(self, mode: str) -> float:
        """The host cost of a decode step's ranges in `mode` beyond off, in % of an off step."""
        if not (self.off and self.ranges_per_token and mode in self.range_ns and "off" in self.range_ns):
            return 0.0
        extra_ns = self.ranges_per_token * (self.range_ns[mode] - self.range_ns["off"])
        return 100.0 * extra_ns / (1e9 / self.off)

    def as_dict(self) -> dict:
        return {"on_tok_s": self.on_tok_s, "off_tok_s": self.off_tok_s, "forced_tok_s": self.forced_tok_s,
                "on_median": self.on, "off_median": self.off, "forced_median": self.forced,
                "overhead_pct": self.overhead_pct, "forced_overhead_pct": self.forced_overhead_pct,
                "tool_attached": self.tool_attached, "range_ns": self.range_ns,
                "ranges_per_token": self.ranges_per_token,
                "predicted_pct": {m: self.predicted_pct(m) for m in ("on", "forced")}}

    def describe(self, device: str) -> str:
        """The report: both cases, and which one a user without a profiler sees."""
        on_case = "a tool is attached, ranges pushed" if self.tool_attached else "no tool attached, ranges skipped"
        lines = [(f"NVTX overhead on decode ({device}, {len(self.off_tok_s)} rounds on one runtime, modes "
                  "interleaved token by token, median tok/s): "
                  f"off {self.off:.2f}; on ({on_case}) {self.on:.2f}, {self.overhead_pct:+.2f}%; "
                  f"forced on (QPROF_NVTX=1: every range pushed through nvtx"
                  f"{'' if self.tool_attached else ' with no tool to record it'}) {self.forced:.2f}, "
                  f"{self.forced_overhead_pct:+.2f}%")]
        if self.range_ns and self.ranges_per_token:
            cost = ", ".join(f"{m} {ns:.0f} ns" for m, ns in self.range_ns.items())
            lines.append(f"host cost of one op range (enter + exit, {RANGE_COST_CALLS} calls): {cost}; a decode step "
                         f"opens {self.ranges_per_token} ranges, so on costs {self.predicted_pct('on'):+.2f}% and "
                         f"forced {self.predicted_pct('forced'):+.2f}% of an NVTX-off step")
        return "\n".join(lines)


class _RangeCounter:
    """Listener that counts the ranges opened."""

    def __init__(self) -> None:
        self.n = 0

    def begin(self, info) -> None:
        self.n += 1

    def end(self, info) -> None:
        pass


def range_cost_ns(annotator: Annotator, calls: int = RANGE_COST_CALLS) -> float:
    """Host ns of one op range, enter and exit, as the runtimes open it."""
    op = annotator.op
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        with op("blk.0.attn_q", "matvec", "Q4_K"):
            pass
    return (time.perf_counter_ns() - t0) / calls


def measure_nvtx_overhead(spec: WorkloadSpec, repeats: int = 3, model=None) -> NvtxOverhead:
    """Decode tok/s with NVTX off, on (tool detection as users get it) and forced, on one runtime: each round
    prefills a short prompt, then decodes n_gen tokens in each mode with the mode changing every token, so
    drift and position hit all alike; a mode's tok/s is from its median step. No listeners, no capture; the
    garbage collector is off."""
    from qprof.annotate import tool_attached
    from qprof.runtime.base import SamplingParams
    from qprof.runtime.factory import create_runtime

    if repeats < 1:
        raise QprofError(f"--repeats must be at least 1, got {repeats}")
    model = model if model is not None else load_model(spec.model)
    cfg = model.config
    n_ctx = OVERHEAD_PROMPT + len(NVTX_MODES) * spec.n_gen + 1
    if n_ctx > cfg.n_ctx:
        raise QprofError(f"--n-gen {spec.n_gen} in {len(NVTX_MODES)} modes exceeds the model's context of "
                         f"{cfg.n_ctx} tokens")
    annotator = Annotator(nvtx_enabled=True)
    rt = create_runtime(model, spec.device, spec.options.with_(nvtx=True), annotator, n_ctx=n_ctx)
    prompt, params = prompt_tokens(OVERHEAD_PROMPT, cfg.n_vocab, spec.seed), SamplingParams()

    def round_(offset: int) -> dict[str, float]:
        """Decode n_gen tokens per mode, the mode changing every token; tok/s from each mode's median step."""
        steps: dict[str, list[int]] = {name: [] for name, _, _ in NVTX_MODES}
        rt.reset()
        tok = rt.sample(rt.prefill(prompt), params)
        rt.synchronize()
        for i in range(len(NVTX_MODES) * spec.n_gen):
            name, enabled, force = NVTX_MODES[(i + offset) % len(NVTX_MODES)]
            annotator.set_nvtx(enabled, force)
            t0 = time.perf_counter_ns()
            tok = rt.sample(rt.decode(tok), params)
            rt.synchronize()
            steps[name].append(time.perf_counter_ns() - t0)
        return {name: 1e9 / statistics.median(ns) for name, ns in steps.items()}

    round_(0)  # warm-up: kernel loading, allocator growth, graph capture, each mode's ranges built
    rt.reset()
    tok = rt.sample(rt.prefill(prompt), params)
    counter = _RangeCounter()
    annotator.listeners.append(counter)
    rt.sample(rt.decode(tok), params)  # one step, to count its ranges
    annotator.listeners.remove(counter)
    tok_s: dict[str, list[float]] = {name: [] for name, _, _ in NVTX_MODES}
    range_ns: dict[str, float] = {}
    try:
        with gc_paused():
            for r in range(repeats):
                for name, value in round_(r).items():
                    tok_s[name].append(value)
            for name, enabled, force in NVTX_MODES:
                annotator.set_nvtx(enabled, force)
                range_ns[name] = range_cost_ns(annotator)
    finally:
        annotator.set_nvtx(True)
    return NvtxOverhead(tok_s["on"], tok_s["off"], tok_s["forced"], tool_attached(), range_ns, counter.n)
