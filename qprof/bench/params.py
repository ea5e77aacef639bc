"""Bench parameters as llama-bench takes them: comma lists, expanded into an ordered run plan."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from qprof.checks import check_context
from qprof.errors import QprofError
from qprof.runtime.options import DECODE_LOOPS, INJECT_FAULTS, MASK_MODES, RuntimeOptions
from qprof.runtime.threads import default_threads

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
CTX_ALIGN = 256  # KV caches are sized in whole multiples of this many tokens
# --faults: the clean run, then each of the seed's fault switches on its own
FAULT_SETS = ({}, {"mask": "upload"}, {"scalar_upload": True}, {"sync_every_op": True}, {"inject": "block-dim"})


def split_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (empty items dropped)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _unique(values: Iterable) -> list:
    seen: list = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def parse_int_list(text: str, option: str, minimum: int = 0) -> list[int]:
    items = split_list(text)
    if not items:
        raise QprofError(f"{option} needs at least one value, e.g. {option} 512")
    out = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise QprofError(f"{option}: {item!r} is not an integer (expected a comma list such as 128,512)") from None
        if value < minimum:
            raise QprofError(f"{option}: {value} is below the minimum {minimum}")
        out.append(value)
    return _unique(out)


def parse_bool_list(text: str, option: str) -> list[bool]:
    items = split_list(text)
    if not items:
        raise QprofError(f"{option} needs at least one value: 0, 1 or 0,1")
    out = []
    for item in items:
        word = item.lower()
        if word in TRUE_WORDS:
            out.append(True)
        elif word in FALSE_WORDS:
            out.append(False)
        else:
            raise QprofError(f"{option}: {item!r} is not 0 or 1 (expected a comma list such as 0,1)")
    return _unique(out)


def parse_choice_list(text: str, option: str, choices: Sequence[str]) -> list[str]:
    items = split_list(text)
    if not items:
        raise QprofError(f"{option} needs at least one of: {', '.join(choices)}")
    for item in items:
        if item not in choices:
            raise QprofError(f"{option}: unknown value {item!r}; choose from {', '.join(choices)}")
    return _unique(items)


def parse_pg(values: Iterable[str]) -> list[tuple[int, int]]:
    """Each -pg value is one 'PP,TG' pair (repeat -pg for several), as in llama-bench."""
    pairs = []
    for text in values:
        items = split_list(text)
        if len(items) != 2:
            raise QprofError(f"-pg: {text!r} must be two integers PP,TG such as 512,128")
        try:
            pp, tg = int(items[0]), int(items[1])
        except ValueError:
            raise QprofError(f"-pg: {text!r} must be two integers PP,TG such as 512,128") from None
        if pp <= 0 or tg <= 0:
            raise QprofError(f"-pg: {text!r} needs both PP and TG above 0")
        pairs.append((pp, tg))
    return _unique(pairs)


def parse_kv_types(text: str, option: str = "--kv-type") -> list[str]:
    from qprof.runtime.options import KV_TYPES

    return parse_choice_list(text, option, KV_TYPES)


def parse_mask(text: str, option: str = "--mask") -> list[str]:
    return parse_choice_list(text, option, MASK_MODES)


def default_graphs(device: str, faults: bool) -> tuple[list[bool], bool]:
    """(--graphs values, auto) when --graphs is not given.

    On a GPU decode is captured as a CUDA graph wherever the options allow it (llama.cpp's default);
    auto=True lets option_sets() turn graphs off for the sets that cannot be captured. Under --faults
    graphs stay off, so the clean row and the fault rows (some of which force eager decode) run the
    same way. The CPU has no graphs.
    """
    if device == "cuda" and not faults:
        return [True], True
    return [False], False


def parse_decode_loop(text: str, option: str = "--decode-loop") -> list[str]:
    return parse_choice_list(text, option, DECODE_LOOPS)


def parse_inject(text: str, option: str = "--inject") -> list[str | None]:
    """'none,block-dim' -> [None, 'block-dim']."""
    return [None if v == "none" else v for v in parse_choice_list(text, option, ("none", *INJECT_FAULTS))]


@dataclass(frozen=True)
class BenchTest:
    """One llama-bench test: prompt processing (pp), generation (tg) or both in sequence (pg); a test that
    generates runs one of DECODE_LOOPS (a pp test has none: it never decodes)."""

    n_prompt: int
    n_gen: int
    decode_loop: str = "synced"

    @property
    def loop(self) -> str | None:
        """The decode loop a row records: None for a pp test."""
        return self.decode_loop if self.n_gen else None

    @property
    def kind(self) -> str:
        if self.n_prompt and self.n_gen:
            return "pg"
        return "pp" if self.n_prompt else "tg"

    @property
    def name(self) -> str:
        if self.kind == "pg":
            return f"pp{self.n_prompt}+tg{self.n_gen}"
        return f"pp{self.n_prompt}" if self.kind == "pp" else f"tg{self.n_gen}"

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen


@dataclass(frozen=True)
class Group:
    """Tests that share one model and one runtime (same options and context size)."""

    model: str
    options: RuntimeOptions
    n_ctx: int
    tests: tuple[BenchTest, ...]
    n_threads: int = 1  # torch's CPU threads while this group runs


@dataclass
class BenchParams:
    models: list[str]
    n_prompt: list[int] = field(default_factory=lambda: [512])
    n_gen: list[int] = field(default_factory=lambda: [128])
    pg: list[tuple[int, int]] = field(default_factory=list)
    repetitions: int = 5
    warmup: bool = True
    mask: list[str] = field(default_factory=lambda: ["skip"])
    scalar_upload: list[bool] = field(default_factory=lambda: [False])
    sync_every_op: list[bool] = field(default_factory=lambda: [False])
    inject: list[str | None] = field(default_factory=lambda: [None])
    decode_loop: list[str] = field(default_factory=lambda: ["in-flight"])  # tg and pg tests run each one
    cuda_graphs: list[bool] = field(default_factory=lambda: [False])
    # with cuda_graphs: prefill chunks of a shape run before replay their graph (bench repeats every prompt)
    prefill_graphs: list[bool] = field(default_factory=lambda: [True])
    nvtx: list[bool] = field(default_factory=lambda: [False])
    kv_type: list[str] = field(default_factory=lambda: ["f32"])
    fused: list[bool] = field(default_factory=lambda: [True])
    pdl: list[bool] = field(default_factory=lambda: [False])
    n_ctx: list[int | None] = field(default_factory=lambda: [None])
    n_threads: list[int] = field(default_factory=lambda: [default_threads()])
    # model -> (context it declares, where that is written), from qprof.checks.declared_context
    declared_ctx: dict[str, tuple[int, str]] = field(default_factory=dict)
    faults: bool = False  # clean plus each fault switch on its own, instead of the switches' product
    graphs_auto: bool = False  # --graphs not given on a GPU: graphs on for every option set that can be captured

    # llama-bench shows a column only when its parameter differs from the default
    SWITCHES = ("mask", "scalar_upload", "sync_every_op", "inject", "cuda_graphs", "prefill_graphs", "nvtx", "kv_type",
                "fused", "pdl", "n_ctx", "n_threads", "decode_loop")

    def __post_init__(self) -> None:
        if not self.models:
            raise QprofError("no model given (-m FILE|WORKLOAD)")
        if self.repetitions < 1:
            raise QprofError(f"-r: {self.repetitions} repetitions; need at least 1")
        if not self.tests():
            raise QprofError("nothing to run: -p and -n are all 0 and no -pg was given")
        if self.faults and (self.mask != ["skip"] or self.scalar_upload != [False]
                            or self.sync_every_op != [False] or self.inject != [None]):
            raise QprofError("--faults runs each fault switch itself; drop --mask/--scalar-upload/--sync-every-op/"
                             "--inject")

    def tests(self) -> list[BenchTest]:
        """pp tests, then tg, then pg, each in the order given; 0 entries are skipped like llama-bench. A test that
        generates runs once per decode loop, the loops side by side (one runtime serves them all)."""
        out = [BenchTest(p, 0) for p in self.n_prompt if p > 0]
        out += [BenchTest(0, n, loop) for n in self.n_gen if n > 0 for loop in self.decode_loop]
        out += [BenchTest(p, n, loop) for p, n in self.pg for loop in self.decode_loop]
        return out

    def needed_ctx(self) -> int:
        return max(t.n_tokens for t in self.tests())

    def option_sets(self) -> list[RuntimeOptions]:
        if self.faults:
            # one configuration per fault, each on its own, beside the clean run (for every graphs/nvtx value)
            sets = [RuntimeOptions(cuda_graphs=g, nvtx=nv).with_(**fault)
                    for g, nv in itertools.product(self.cuda_graphs, self.nvtx) for fault in FAULT_SETS]
        else:
            combos = itertools.product(self.mask, self.scalar_upload, self.sync_every_op, self.inject,
                                       self.cuda_graphs, self.nvtx)
            sets = [RuntimeOptions(mask=m, scalar_upload=su, sync_every_op=so, inject=inj, cuda_graphs=g, nvtx=nv)
                    for m, su, so, inj, g, nv in combos]
        # the decode-path choices multiply every set (they are not faults: a --faults run keeps them too)
        sets = [o.with_(kv_type=kv, fused=fu, pdl=pd, prefill_graphs=pg) for o in sets
                for kv, fu, pd, pg in itertools.product(self.kv_type, self.fused, self.pdl, self.prefill_graphs)]
        if self.graphs_auto:
            from qprof.runtime.cuda.graphs import graph_blocker

            # graphs by default only where the step can be captured: no fallback warning for a default
            sets = [o.with_(cuda_graphs=graph_blocker(o) is None) for o in sets]
        # prefill graphs ride on CUDA graphs: without them both values are one eager configuration
        return _unique(o.with_(prefill_graphs=o.prefill_graphs and o.cuda_graphs) for o in sets)

    def ctx_sizes(self, model: str | None = None) -> list[int]:
        """KV-cache sizes for `model`: --ctx as given, else the longest test rounded up to CTX_ALIGN but never
        past the context the model declares (declared_ctx, filled before the run); tests past it are refused."""
        need = self.needed_ctx()
        declared, source = self.declared_ctx.get(model, (0, "")) if model is not None else (0, "")
        longest = max(self.tests(), key=lambda t: t.n_tokens)
        what = {"pp": f"-p {longest.n_prompt}", "tg": f"-n {longest.n_gen}",
                "pg": f"-pg {longest.n_prompt},{longest.n_gen}"}[longest.kind]
        check_context(need, what, model or "the model", declared, source)
        out = []
        for n in self.n_ctx:
            if n is None:
                n = -(-need // CTX_ALIGN) * CTX_ALIGN
                n = min(n, declared) if declared else n
            elif n < need:
                raise QprofError(f"--ctx {n} is too small: the longest test needs {need} tokens of context")
            elif declared and n > declared:
                raise QprofError(f"--ctx {n} is more than the {declared} tokens of context {model} declares ({source})")
            out.append(n)
        return _unique(out)

    def groups(self) -> list[Group]:
        """The run plan. Models vary slowest so each file is loaded once; tests vary fastest."""
        tests = tuple(self.tests())
        return [Group(m, o, c, tests, t) for m in self.models
                for o, c, t in itertools.product(self.option_sets(), self.ctx_sizes(m), self.n_threads)]

    def n_rows(self) -> int:
        return sum(len(g.tests) for g in self.groups())

    def varying(self) -> list[str]:
        """Switches to show as table columns: given more than once, or set away from the default."""
        defaults = BenchParams(models=["-"])
        varying = [name for name in self.SWITCHES
                   if len(getattr(self, name)) > 1 or getattr(self, name) != getattr(defaults, name)]
        if not any(t.n_gen for t in self.tests()):  # pp tests only: no row has a decode loop to show
            varying = [name for name in varying if name != "decode_loop"]
        if self.graphs_auto:  # the default on a GPU: a column only where some option sets could not be captured
            mixed = len({o.cuda_graphs for o in self.option_sets()}) > 1
            varying = [name for name in varying if name != "cuda_graphs" or mixed]
            if mixed and "cuda_graphs" not in varying:
                varying = [name for name in self.SWITCHES if name in varying or name == "cuda_graphs"]
        return ["options", *varying] if self.faults else varying
