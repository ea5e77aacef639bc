"""First numbers for the GPU forward: prompt (pp) and decode (tg) tokens/s beside the memory-traffic floor.

    python3 tests/gpu/bench_forward.py -m mistral-7b-q4_k_m -p 512 -n 128 -r 3 --json $OUT/bench.json

The model is a file or a workload name (made on demand, and the time it took is printed).
pp: prefill of p seeded random tokens from an empty cache. tg: n greedy decode steps (decode +
on-device argmax + one int read back each) after a 1-token prefill, eager and with CUDA graphs,
then once per fault switch. Host clocks read only after a device synchronize. Each tg row shows
bytes of weights read per token (qprof.runtime.base.decode_weight_bytes) and the % of the floor
bandwidth / bytes, the bandwidth measured on this card (qprof.ceilings, cached); the card is printed
with every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from qprof.ceilings.choose import run_ceilings
from qprof.model.gguf_file import load_model
from qprof.runtime.base import SamplingParams, decode_weight_bytes
from qprof.runtime.cuda.forward import CudaRuntime
from qprof.runtime.options import RuntimeOptions
from qprof.workloads import resolve_model

GREEDY = SamplingParams()
TG_CONFIGS = {
    "eager": RuntimeOptions(nvtx=False),
    "graphs": RuntimeOptions(nvtx=False, cuda_graphs=True),
    "mask=upload": RuntimeOptions(nvtx=False, mask="upload"),
    "mask=device": RuntimeOptions(nvtx=False, mask="device"),
    "scalar-upload": RuntimeOptions(nvtx=False, scalar_upload=True),
    "sync-every-op": RuntimeOptions(nvtx=False, sync_every_op=True),
}


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def pp(rt: CudaRuntime, tokens: list[int]) -> float:
    rt.reset()
    return len(tokens) / timed(lambda: rt.prefill(tokens))


def tg(rt: CudaRuntime, first: int, n: int) -> float:
    rt.reset()
    tok = rt.sample(rt.prefill([first]), GREEDY)

    def steps():
        t = tok
        for _ in range(n):
            t = rt.sample(rt.decode(t), GREEDY)

    return n / timed(steps)


def kernel_table(rt: CudaRuntime, first: int, n: int, top: int = 14) -> list[dict]:
    """GPU time per kernel over n eager decode steps (torch.profiler sees driver-API launches too)."""
    from torch.profiler import ProfilerActivity, profile

    rt.reset()
    tok = rt.sample(rt.prefill([first]), GREEDY)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            tok = rt.sample(rt.decode(tok), GREEDY)
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if us > 0:
            rows.append({"kernel": ev.key, "calls_per_token": ev.count / n, "us_per_token": us / n})
    rows.sort(key=lambda r: -r["us_per_token"])
    total = sum(r["us_per_token"] for r in rows)
    print(f"GPU time per decode token: {total:.0f} us over {len(rows)} kernels; top {top}:")
    for r in rows[:top]:
        print(f"  {r['us_per_token']:8.1f} us  {100 * r['us_per_token'] / total:5.1f}%  "
              f"x{r['calls_per_token']:<5.0f} {r['kernel'][:70]}")
    return rows


def summary(samples: list[float]) -> str:
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return f"{statistics.mean(samples):9.1f} ± {sd:6.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="mistral-7b-q4_k_m")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--configs", default=",".join(TG_CONFIGS), help="tg configurations, comma separated")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.perf_counter()
    path = resolve_model(args.model, log=print)
    print(f"model {path} ready in {time.perf_counter() - t0:.1f} s")
    model = load_model(path)
    card = torch.cuda.get_device_name()
    n_bytes = decode_weight_bytes(model)
    bandwidth = run_ceilings("cuda", log=print).bandwidth
    if not bandwidth.value:
        raise SystemExit(f"no bandwidth for the floor: {bandwidth.source}")
    floor = bandwidth.value * 1e9 / n_bytes
    print(f"card: {card} | model: {model.describe_type()} | {model.size_bytes / 1e9:.2f} GB | "
          f"weights read per decode token: {n_bytes / 1e9:.3f} GB -> floor {floor:.1f} tok/s at "
          f"{bandwidth.value:,.0f} GB/s ({bandwidth.source})")
    n_ctx = args.n_prompt + args.n_gen + 8
    tokens = torch.randint(1, model.config.n_vocab, (args.n_prompt,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    rows = []
    rt: CudaRuntime | None = None
    for name in args.configs.split(","):
        del rt
        torch.cuda.empty_cache()
        t_load = time.perf_counter()
        rt = CudaRuntime(model, options=TG_CONFIGS[name], n_ctx=n_ctx)
        load_s = time.perf_counter() - t_load
        tg(rt, tokens[0], 4)  # warm-up: kernels loaded, graph captured
        row = {"config": name, "card": card, "load_s": load_s, "bytes_per_token": n_bytes,
               "tg": [tg(rt, tokens[0], args.n_gen) for _ in range(args.reps)]}
        if name == "eager":
            row["kernels"] = kernel_table(rt, tokens[0], 16)
            pp(rt, tokens[:16])
            row["pp"] = [pp(rt, tokens) for _ in range(args.reps)]
            print(f"pp{args.n_prompt:<4} {summary(row['pp'])} tok/s   (load {load_s:.1f} s)")
        tg_mean = statistics.mean(row["tg"])
        row["pct_floor"] = 100 * tg_mean / floor
        row["gbps"] = tg_mean * n_bytes / 1e9
        print(f"tg{args.n_gen:<4} {summary(row['tg'])} tok/s  {name:14s} {row['gbps']:7.0f} GB/s "
              f"{row['pct_floor']:5.1f}% of floor")
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"model": str(path), "n_prompt": args.n_prompt, "n_gen": args.n_gen,
                                         "floor_tok_s": floor, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
