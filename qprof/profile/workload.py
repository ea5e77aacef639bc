"""Run a model through a runtime for profiling (n_prompt prefill + n_gen decode steps) under any timing mode.

`run_workload` is the in-process loop: warm-up under an NVTX "warmup" range, then the measured
"run" range with the timing mode's listeners and capture around it. `profile_workload` picks
the timing mode (events | blocking | nsys | torch), runs it, and returns one ProfileRun holding
the activity table restricted to the run, the timings, and any stated fallback. The module is
also the child process that nsys and the launch-blocking mode start:
`python -m qprof.profile.workload --spec spec.json --result result.json [--host-timer]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from qprof.checks import check_context
from qprof.errors import QprofError
from qprof.profile.activity import (
    fill_kernel_bytes,
    from_records,
    make_table,
    restrict_to_run,
    to_records,
    validate,
)
from qprof.profile.ranges import Annotator, RangeListener
from qprof.runtime.options import RuntimeOptions
from qprof.runtime.threads import set_threads

TIMINGS = ("events", "blocking", "nsys", "torch")
DEVICES = ("cuda", "cpu")
OVERHEAD_PROMPT = 8  # the short prompt before each round of --nvtx-overhead
WARMUP_DECODE = 2


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

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise QprofError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
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


# --------------------------------------------------------------------------- the in-process loop


def load_model(spec_model: str):
    """A GGUFModel from a file path or a workload name (made on demand, see qprof.workloads)."""
    from qprof.model.gguf_file import load_model as load_gguf
    from qprof.workloads.resolve import resolve_model

    return load_gguf(resolve_model(spec_model))


def prompt_tokens(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    """A fixed, seed-dependent prompt of n token ids spread over the vocabulary."""
    return [(1 + (i + seed) * 7919) % n_vocab for i in range(n)]


def op_weight_bytes(model) -> dict[str, int]:
    """Op range name -> weight bytes that op reads in one decode step (the runtimes' op names)."""
    out: dict[str, int] = {}
    for name, t in model.tensors.items():
        if len(t.shape) != 2 or not name.endswith(".weight"):
            continue
        op = name[: -len(".weight")]
        out[op] = t.n_bytes // t.shape[0] if op == "token_embd" else t.n_bytes
    if model.config.tied_embeddings and "token_embd.weight" in model.tensors:
        out["output"] = model.tensors["token_embd.weight"].n_bytes
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    import platform

    return platform.processor() or platform.machine() or "cpu"


@contextmanager
def gc_paused():
    """Python's garbage collector off (collected first), as timeit does: a pause inside an op would be
    charged to that op."""
    was_on = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def run_workload(spec: WorkloadSpec, listeners: Sequence[RangeListener] = (),
                 capture: Callable[[], AbstractContextManager] | None = None, model=None,
                 force_nvtx: bool | None = None) -> WorkloadResult:
    """Warm up, then prefill n_prompt tokens and decode n_gen under the listeners (and capture, if given).

    NVTX ranges follow spec.options.nvtx and then qprof.profile.ranges.nvtx_decision: pushed when a
    tool is attached, or when `force_nvtx` (else QPROF_NVTX) says so. Python's garbage collector is
    off during the measured run (collected just before), so no collection pause lands inside an op."""
    from qprof.runtime.base import SamplingParams, decode_weight_bytes
    from qprof.runtime.factory import create_runtime

    model = model if model is not None else load_model(spec.model)
    cfg = model.config
    annotator = Annotator(nvtx_enabled=spec.options.nvtx, force_nvtx=force_nvtx)
    n_ctx = spec.n_prompt + spec.n_gen  # the prompt's positions, then one per decode step (as bench counts them)
    check_context(n_ctx, f"-p {spec.n_prompt} + -n {spec.n_gen}", spec.model, cfg.n_ctx, f"{cfg.arch}.context_length")
    if spec.n_threads is not None:
        set_threads(spec.n_threads)
    rt = create_runtime(model, spec.device, spec.options, annotator, n_ctx=n_ctx)
    tokens = prompt_tokens(spec.n_prompt, cfg.n_vocab, spec.seed)
    params = SamplingParams()
    if spec.warmup:  # kernel loading, allocator growth, cuBLAS set-up and graph capture happen here, outside the run
        with annotator.run("warmup"):
            rt.reset()
            tok = rt.sample(rt.prefill(tokens), params)  # the run's prompt: the same shapes, buffers and algorithms
            for _ in range(min(WARMUP_DECODE, spec.n_gen)):
                tok = rt.sample(rt.decode(tok), params)
            rt.synchronize()
    annotator.listeners.extend(listeners)
    try:
        with gc_paused(), capture() if capture is not None else nullcontext(), annotator.run("run"):
            rt.reset()
            rt.synchronize()
            t0 = time.perf_counter_ns()
            tok = rt.sample(rt.prefill(tokens), params)
            rt.synchronize()
            t1 = time.perf_counter_ns()
            for _ in range(spec.n_gen):
                tok = rt.sample(rt.decode(tok), params)
            rt.synchronize()
            t2 = time.perf_counter_ns()
    finally:
        for lis in listeners:
            annotator.listeners.remove(lis)
    name = getattr(getattr(model, "path", None), "name", None) or cfg.name or spec.model
    return WorkloadResult(model_name=str(name), device_name=device_name(spec.device), label=spec.options.label(),
                          n_prompt=spec.n_prompt, n_gen=spec.n_gen, prefill_ns=t1 - t0, decode_ns=t2 - t1,
                          weight_bytes=decode_weight_bytes(model), n_layer=cfg.n_layer,
                          op_bytes=op_weight_bytes(model))


# --------------------------------------------------------------------------- timing modes


def ops_from_ranges(df: pd.DataFrame) -> pd.DataFrame:
    """Host-timed op rows from op-level ranges, for captures that saw ranges but no device work (CPU runtime)."""
    if df.empty or (df["kind"].isin(["kernel", "memcpy", "memset", "op"])).any():
        return df
    ops = df[(df["kind"] == "range") & (df["level"] == "op")].copy()
    if ops.empty:
        return df
    ops["kind"] = "op"
    ops["level"] = None
    return make_table(pd.concat([df, ops], ignore_index=True))


def _finish(run_table: pd.DataFrame, result: WorkloadResult) -> pd.DataFrame:
    table = restrict_to_run(ops_from_ranges(run_table))
    return validate(fill_kernel_bytes(table, result.op_bytes))


def _events(spec: WorkloadSpec, notes: list[str], model=None) -> tuple[pd.DataFrame, WorkloadResult]:
    from qprof.profile.timing_events import OpTimer

    clock = "cuda" if spec.device == "cuda" else "host"
    if clock == "host":
        notes.append("events timing on the CPU runtime uses host timers (CUDA events need a GPU)")
    timer = OpTimer(clock)
    result = run_workload(spec, [timer], model=model)
    table = timer.table()  # reads the events (and calibrates) after the run; the notes then say so
    notes += timer.notes()
    return table, result


def _torch(spec: WorkloadSpec, out_dir: Path, artifacts: dict, notes: list[str],
           model=None) -> tuple[pd.DataFrame, WorkloadResult]:
    from qprof.profile.kineto import RecordFunctionListener, kineto_capture, read_kineto_trace

    trace = out_dir / "kineto_trace.json"
    result = run_workload(spec, [RecordFunctionListener()], capture=lambda: kineto_capture(spec.device, trace),
                          model=model)
    artifacts["kineto_trace"] = str(trace)
    if spec.device == "cuda":
        notes.append("torch.profiler adds host time to every launch: tok/s and launch gaps in this mode are "
                     "inflated (qprof bench measures tok/s without a profiler)")
    return read_kineto_trace(trace), result


def _nsys(spec: WorkloadSpec, out_dir: Path, artifacts: dict, notes: list[str]) -> tuple[pd.DataFrame, WorkloadResult]:
    from qprof.profile.nsys import capture, python_child, read_nsys_sqlite

    if not spec.options.nvtx:
        notes.append("nsys needs the NVTX ranges: profiled with NVTX on")
        spec = spec.with_options(nvtx=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = out_dir / "spec.json", out_dir / "result.json"
    spec_file.write_text(spec.to_json())
    result_file.unlink(missing_ok=True)
    cap = capture(python_child("qprof.profile.workload", "--spec", str(spec_file), "--result", str(result_file)),
                  out_dir, name=f"qprof-{spec.options.label().replace('=', '-').replace(',', '_')}",
                  env=child_env(QPROF_NVTX="1"))  # nsys sets its injection variable too; this also beats a stray 0
    artifacts.update(nsys_rep=str(cap.report), nsys_sqlite=str(cap.sqlite), nsys_log=str(cap.log))
    if not result_file.exists():
        raise QprofError(f"the workload under nsys wrote no result (see {cap.log})")
    result = WorkloadResult.from_dict(json.loads(result_file.read_text())["result"])
    notes.append("tok/s under nsys include its tracing overhead")
    return read_nsys_sqlite(cap.sqlite), result


def profile_workload(spec: WorkloadSpec, timing: str = "events", out_dir: str | Path | None = None,
                     model=None) -> ProfileRun:
    """Run `spec` under `timing` and return the run's table and timings (nsys falls back to events, stated)."""
    if timing not in TIMINGS:
        raise QprofError(f"unknown timing mode {timing!r}; choose from {', '.join(TIMINGS)}")
    notes: list[str] = []
    artifacts: dict[str, str] = {}
    scratch = None
    if out_dir is None and timing == "nsys":  # the .nsys-rep and .sqlite are artifacts: keep them
        out_dir = Path("qprof-profile")
        notes.append(f"nsys artifacts go to {out_dir}/ (set --out to choose)")
    if out_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="qprof-profile-")
        out = Path(scratch.name)
    else:
        out = Path(out_dir)  # each mode creates it when it writes there
    used = timing
    try:
        if timing == "nsys":
            from qprof.profile.nsys import NsysUnavailable

            try:
                table, result = _nsys(spec, out, artifacts, notes)
            except NsysUnavailable as exc:
                notes.append(f"{exc}; falling back to --timing events")
                used = "events"
                table, result = _events(spec, notes, model)
        elif timing == "blocking":
            from qprof.profile.timing_blocking import run_blocking

            table, result = run_blocking(spec, out, notes)
        elif timing == "torch":
            table, result = _torch(spec, out, artifacts, notes, model)
        else:
            table, result = _events(spec, notes, model)
        table = _finish(table, result)
    finally:
        if scratch is not None:
            artifacts = {}  # the files went with the temporary directory
            scratch.cleanup()
    return ProfileRun(spec, used, table, result, notes, artifacts)


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
    from qprof.profile.ranges import tool_attached
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


# --------------------------------------------------------------------------- child process entry


def child_main(argv: Sequence[str] | None = None) -> int:
    """Run one workload (for nsys or the launch-blocking mode) and write its result (and host-timed table)."""
    ap = argparse.ArgumentParser(prog="python -m qprof.profile.workload")
    ap.add_argument("--spec", required=True, help="WorkloadSpec JSON file")
    ap.add_argument("--result", required=True, help="where to write the result JSON")
    ap.add_argument("--host-timer", action="store_true", help="time every range with host timers")
    args = ap.parse_args(argv)
    spec = WorkloadSpec.from_json(Path(args.spec).read_text())
    listeners = []
    if args.host_timer:
        from qprof.profile.timing_events import OpTimer

        listeners.append(OpTimer("host"))
    try:
        result = run_workload(spec, listeners)
    except QprofError as exc:
        print(f"qprof: error: {exc}", file=sys.stderr)
        return 2
    out = {"result": result.as_dict()}
    if listeners:
        out["table"] = to_records(listeners[0].table())
    Path(args.result).write_text(json.dumps(out))
    return 0


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child `python -m qprof...`: this qprof first on PYTHONPATH, plus `extra`."""
    import os

    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def read_child_result(path: Path) -> tuple[pd.DataFrame | None, WorkloadResult]:
    data = json.loads(path.read_text())
    table = from_records(data["table"]) if "table" in data else None
    return table, WorkloadResult.from_dict(data["result"])


if __name__ == "__main__":
    sys.exit(child_main())
