"""Run the plan: load each model once, build a runtime per option set, time pp/tg/pg tests like llama-bench."""

from __future__ import annotations

import gc
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from qprof.bench.params import BenchParams, BenchTest, Group
from qprof.bench.record import (
    SCHEMA,
    Environment,
    kv_type,
    options_fields,
    ordered,
    prefill_ubatch,
    quant_label,
    timing_stats,
)
from qprof.bench.roofline import bound_fields, prefill_flops
from qprof.bench.telemetry import Sampler, throttle_warning
from qprof.ceilings.choose import RunCeilings
from qprof.errors import QprofError
from qprof.runtime.in_flight import WARM_STEPS, run_greedy
from qprof.runtime.options import RuntimeOptions, gpu_only_note
from qprof.runtime.threads import set_threads


@dataclass
class LoadedModel:
    spec: str  # what -m said: a file or a workload name
    path: Path
    model: object  # GGUFModel

    def facts(self) -> dict:
        from qprof.runtime.base import decode_weight_bytes

        m = self.model
        name = m.metadata.get("general.name") or m.config.name or m.config.arch
        return {"model": self.spec, "model_filename": str(self.path), "model_type": f"{name} {quant_label(m)}",
                "model_size": m.size_bytes, "model_n_params": m.n_params, "quant": quant_label(m),
                "bytes_per_token": decode_weight_bytes(m)}


def load_spec(spec: str, log: Callable[[str], None] | None = None) -> LoadedModel:
    """A GGUF path, or a workload name that qprof.workloads writes locally on first use (no download)."""
    from qprof.model.gguf_file import load_model
    from qprof.workloads import resolve_model

    path = resolve_model(spec, log=log)
    return LoadedModel(spec, Path(path), load_model(path))


class TokenSource:
    """Token ids the way llama-bench feeds them: BOS first where the vocabulary adds one, then random ids."""

    def __init__(self, model, seed: int = 0):
        meta = getattr(model, "metadata", {}) or {}
        self.n_vocab = int(model.config.n_vocab)
        if self.n_vocab <= 0:
            raise QprofError("model has no vocabulary size; cannot make benchmark tokens")
        bos = meta.get("tokenizer.ggml.bos_token_id")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
        self.bos = int(bos) if bos is not None and add_bos and 0 <= int(bos) < self.n_vocab else None
        self.rng = random.Random(seed)

    def tokens(self, n: int, start: bool = True) -> list[int]:
        out = [self.rng.randrange(self.n_vocab) for _ in range(n)]
        if start and n and self.bos is not None:
            out[0] = self.bos
        return out


def warm_up(runtime, test: BenchTest, src: TokenSource) -> None:
    """llama-bench's warm-up: the whole prompt once, and one generated token; an in-flight test generates two
    tokens through its loop, so the chained step's kernel is loaded and the graph replayed before the clock runs."""
    runtime.reset()
    if test.n_prompt:
        runtime.prefill(src.tokens(test.n_prompt))
        runtime.synchronize()
    if test.n_gen:
        first = src.tokens(1, start=not test.n_prompt)[0]
        if test.decode_loop == "in-flight":
            run_greedy(runtime, first, min(WARM_STEPS, test.n_gen))
        else:
            runtime.decode(first)
        runtime.synchronize()


def time_test(runtime, test: BenchTest, src: TokenSource) -> int:
    """One repetition from an empty KV cache; ns between two device synchronizations.

    Tokens are drawn before the clock starts. A synced test decodes random tokens and synchronizes after
    every one, as llama-bench does (a loop that samples on the host must wait for each token). An in-flight
    test runs test.n_gen greedy steps from the first of those tokens, each step's argmax feeding the next on
    the device while the host reads the token before it (qprof.runtime.in_flight): the loop a generation with
    greedy sampling runs, its argmax and token read-back included.
    """
    from qprof.runtime.timed import timed_loop

    prompt = src.tokens(test.n_prompt)
    gen_tokens = src.tokens(test.n_gen, start=not test.n_prompt)  # drawn for either loop: the same random stream
    gen = iter(gen_tokens)
    chained = None
    if test.decode_loop == "in-flight" and test.n_gen:
        def chained(first: int) -> None:
            run_greedy(runtime, first, test.n_gen)

    times = timed_loop(runtime, prompt or None, lambda logits: next(gen, None), sync_after_prefill=False,
                       sync_every_step=True, decode_loop=chained)
    return times.prefill_ns + times.decode_ns


def graphs_in_use(runtime) -> bool:
    """Whether the runtime captures decode as a CUDA graph: CudaRuntime keeps a StepGraph in .graph only
    when graphs were asked for and the options allow capture (else .graph_fallback says why). The CPU
    runtime has no graphs."""
    return getattr(runtime, "graph", None) is not None


def prefill_chunk_counts(runtime) -> tuple[int, int]:
    """(prefill chunks replayed as CUDA graphs, chunks its graph cache ran eagerly) so far; (0, 0) for a runtime
    without prefill graphs, whose every chunk runs eagerly (the CPU; CUDA with graphs or prefill graphs off)."""
    graphs = getattr(runtime, "prefill_graphs", None)
    return (graphs.replays, graphs.eager) if graphs is not None else (0, 0)


def prefill_in_effect(replayed: int, eager: int) -> tuple[bool, str | None]:
    """Whether the timed prefills ran as CUDA graphs (every chunk replayed), and a note where only some did."""
    if replayed and eager:
        return False, (f"prefill: {replayed} of {replayed + eager} timed chunks replayed a CUDA graph; the others "
                       "ran eagerly (a shape's first run, or no graph slot free)")
    return bool(replayed), None


def release_memory(device: str) -> None:
    """Free a dropped runtime's device memory before the next one is built."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


class BenchRunner:
    def __init__(self, params: BenchParams, env: Environment, ceilings: RunCeilings,
                 sampler: Sampler, load: Callable[[str], LoadedModel] = load_spec,
                 create_runtime: Callable | None = None,
                 on_step: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None,
                 groups: list[Group] | None = None):
        if create_runtime is None:
            from qprof.runtime.factory import create_runtime
        self.params = params
        self.env = env
        self.ceilings = ceilings
        self.sampler = sampler
        self.load = load
        self.create_runtime = create_runtime
        self.on_step = on_step or (lambda label: None)
        self.warn = warn or (lambda msg: None)
        self.groups = groups  # a slice of the plan (a --gpus/--ray worker); None: the whole plan
        self.runtime_names: list[str] = []
        self.loaded: dict[str, LoadedModel] = {}  # every model run, by -m spec (llama-bench runs the same files)

    def steps(self) -> int:
        """Progress units: every repetition and every warm-up."""
        return self.params.n_rows() * (self.params.repetitions + (1 if self.params.warmup else 0))

    def rows(self) -> Iterator[dict]:
        """Yield one finished row per test, in plan order; Ctrl-C stops between or inside tests."""
        loaded: LoadedModel | None = None
        for group in self.groups if self.groups is not None else self.params.groups():
            if loaded is None or loaded.spec != group.model:
                loaded = None
                release_memory(self.env.device)
                loaded = self.load(group.model)
                self.loaded[group.model] = loaded
            facts = loaded.facts()
            set_threads(group.n_threads)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                runtime = self.create_runtime(loaded.model, self.env.device, group.options, None, group.n_ctx)
            # e.g. "CUDA graphs off: mask=upload copies a host-built mask every step": say it, and keep it in rows
            notes = "; ".join(dict.fromkeys(str(w.message) for w in caught)) or None
            if notes:
                self.warn(f"warning: {group.model} [{options_fields(group.options)['options']}]: {notes}")
            ignored = gpu_only_note(group.options, self.env.device)  # said once by the command; kept in each row
            notes = "; ".join(n for n in (notes, ignored) if n) or None
            # the row records the options in effect: graphs only where the runtime really captures decode
            in_effect = group.options.with_(cuda_graphs=graphs_in_use(runtime))
            name = type(runtime).__name__
            if name not in self.runtime_names:
                self.runtime_names.append(name)
            try:
                src = TokenSource(loaded.model)
                for test in group.tests:
                    row = self.run_test(runtime, loaded, facts, group, test, src, in_effect)
                    yield {**row, "notes": "; ".join(n for n in (notes, row.get("notes")) if n) or None}
            finally:
                self.sampler.close()
                runtime = None
                release_memory(self.env.device)

    def run_test(self, runtime, loaded: LoadedModel, facts: dict, group: Group, test: BenchTest,
                 src: TokenSource, options: RuntimeOptions | None = None) -> dict:
        p = self.params
        options = options or group.options
        label = f"{test.name} {options_fields(options, test.loop)['options']}"
        test_time = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if p.warmup:
            warm_up(runtime, test, src)
            self.on_step(label)
        self.sampler.start()
        samples = []
        before = prefill_chunk_counts(runtime)
        for _ in range(p.repetitions):
            samples.append(time_test(runtime, test, src))
            self.on_step(label)
        telemetry = self.sampler.stop()
        # the row says how its timed prefills really ran: replayed graphs, or eagerly
        replayed, eager = (a - b for a, b in zip(prefill_chunk_counts(runtime), before))
        prefill_graphs, prefill_note = prefill_in_effect(replayed, eager)
        options = options.with_(prefill_graphs=prefill_graphs)
        stats = timing_stats(samples, test.n_tokens)
        flops_per_token = prefill_flops(loaded.model, test.n_prompt) / test.n_prompt if test.kind == "pp" else None
        row = {
            **{k: getattr(self.env, k) for k in ("build_commit", "build_number", "cpu_info", "gpu_info",
                                                 "backends", "device", "gpu_name", "driver",
                                                 "cuda_version", "cuda_driver", "torch_version",
                                                 "qprof_version")},
            **facts,
            "schema": SCHEMA,
            "test": test.name,
            "runtime": type(runtime).__name__,
            "n_threads": group.n_threads,
            "n_batch": test.n_prompt or 1,  # the whole prompt goes to prefill() in one call
            "n_ubatch": prefill_ubatch(runtime, test.n_prompt) or 1,
            "type_k": kv_type(runtime),
            "type_v": kv_type(runtime),
            "n_gpu_layers": loaded.model.config.n_layer if self.env.device == "cuda" else 0,
            "flash_attn": False,
            "n_prompt": test.n_prompt,
            "n_gen": test.n_gen,
            "test_time": test_time,
            **stats,
            "repetitions": p.repetitions,
            "warmup": p.warmup,
            "n_ctx": group.n_ctx,
            **options_fields(options, test.loop),
            **bound_fields(test.kind, facts["bytes_per_token"], flops_per_token, self.ceilings, stats["avg_ts"]),
            **telemetry,
            "notes": prefill_note,
        }
        message = throttle_warning(telemetry, label)
        if message:
            self.warn(message)
        return ordered(row)
