"""One bench row: llama-bench's fields plus qprof's, and the facts about the machine and build behind it."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qprof.bench.telemetry import SUMMARY_FIELDS

SCHEMA = 2  # bump when a field changes meaning (2: bandwidth_GBps is the measured streaming read; peer rows)

# name -> type, in output order. llama-bench's fields first, with its names and meanings.
LLAMA_BENCH_FIELDS = {
    "build_commit": "str", "build_number": "int", "cpu_info": "str", "gpu_info": "str", "backends": "str",
    "model_filename": "str", "model_type": "str", "model_size": "int", "model_n_params": "int",
    "n_batch": "int", "n_ubatch": "int", "n_threads": "int", "type_k": "str", "type_v": "str",
    "n_gpu_layers": "int", "flash_attn": "bool", "n_prompt": "int", "n_gen": "int", "test_time": "str",
    "avg_ns": "int", "stddev_ns": "int", "avg_ts": "float", "stddev_ts": "float",
    "samples_ns": "list", "samples_ts": "list",
}
QPROF_FIELDS = {
    "schema": "int", "test": "str", "model": "str", "quant": "str", "device": "str", "runtime": "str",
    "gpu_name": "str", "driver": "str", "cuda_version": "str", "cuda_driver": "str", "torch_version": "str",
    "host": "str", "gpu_index": "int", "gpu_uuid": "str",  # where the row ran (nvidia-smi's GPU index)
    "qprof_version": "str", "repetitions": "int", "warmup": "bool", "n_ctx": "int",
    "mask": "str", "scalar_upload": "bool", "sync_every_op": "bool", "inject": "str", "cuda_graphs": "bool",
    "prefill_graphs": "bool",  # every timed prefill chunk replayed a CUDA graph (False where any ran eagerly, or none ran)
    "nvtx": "bool", "kv_type": "str", "fused": "bool", "pdl": "bool",
    # tg/pg: "in-flight" (greedy tokens chained on the device) or "synced" (llama-bench's loop); None on pp rows
    "decode_loop": "str", "options": "str", "notes": "str",
    "bytes_per_token": "int", "bandwidth_GBps": "float", "bandwidth_source": "str", "floor_ts": "float",
    "pct_of_floor": "float", "flops_per_token": "float", "gemm_TFLOPS": "float", "gemm_source": "str",
    "roofline_ts": "float", "pct_of_roofline": "float",
    # a peer row (another program's measurement, e.g. llama.cpp's llama-bench) names it; None on qprof's rows
    "peer": "str", "peer_source": "str", "qprof_ratio": "float",
    **{name: ("int" if name.endswith("samples") else "bool" if name == "throttled"
              else "str" if name in ("throttle_reasons", "telemetry_source") else "float")
       for name in SUMMARY_FIELDS},
}
FIELDS: dict[str, str] = {**LLAMA_BENCH_FIELDS, **QPROF_FIELDS}

@dataclass(frozen=True)
class Environment:
    device: str  # "cuda" or "cpu"
    backends: str  # llama-bench's name for it: "CUDA" or "CPU"
    build_commit: str
    build_number: int
    cpu_info: str
    gpu_info: str
    gpu_name: str | None
    driver: str | None
    cuda_version: str | None
    cuda_driver: str | None
    torch_version: str
    qprof_version: str
    n_threads: int


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def build_info() -> tuple[str, int]:
    """(commit, commit count) of the qprof checkout, '-dirty' when tracked files changed.

    QPROF_BUILD_COMMIT names the build where there is no .git (e.g. a copied working tree).
    """
    env = os.environ.get("QPROF_BUILD_COMMIT")
    commit = _git("rev-parse", "--short=8", "HEAD")
    count = _git("rev-list", "--count", "HEAD")
    if env:
        return env, int(count) if count and count.isdigit() else 0
    if commit is None:
        return "unknown", 0
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return commit, int(count) if count and count.isdigit() else 0


def cpu_info() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_driver_version() -> str | None:
    """The NVIDIA kernel module's version, for when NVML is not available."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None


def qprof_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("qprof")
    except metadata.PackageNotFoundError:
        import qprof

        return getattr(qprof, "__version__", "unknown")


def collect_environment(device: str, nvml_info: dict | None = None) -> Environment:
    import torch

    nvml_info = nvml_info or {}
    commit, number = build_info()
    gpu_name = None
    gpu_info = ""
    if device == "cuda":
        gpu_name = torch.cuda.get_device_name(torch.cuda.current_device())
        gpu_info = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Environment(
        device=device,
        backends="CUDA" if device == "cuda" else "CPU",
        build_commit=commit,
        build_number=number,
        cpu_info=cpu_info(),
        gpu_info=gpu_info,
        gpu_name=gpu_name,
        driver=nvml_info.get("driver") or (kernel_driver_version() if device == "cuda" else None),
        cuda_version=torch.version.cuda,
        cuda_driver=nvml_info.get("cuda_driver"),
        torch_version=torch.__version__,
        qprof_version=qprof_version(),
        n_threads=torch.get_num_threads(),
    )


def quant_label(model) -> str:
    """'Q4_K_M' from general.file_type where gguf names it, else the most common matrix type."""
    ftype = model.metadata.get("general.file_type")
    if ftype is not None:
        try:
            from gguf import LlamaFileType

            return LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")
        except (ImportError, ValueError):
            pass
    mats = [t.qtype for n, t in model.tensors.items() if len(t.shape) == 2 and "token_embd" not in n]
    return max(set(mats), key=mats.count) if mats else "F32"


def kv_type(runtime) -> str:
    """KV-cache element type in ggml's spelling (f32, f16, bf16)."""
    cache = getattr(runtime, "cache", None)  # the CUDA runtime's KvCache(k, v)
    dtype = (getattr(runtime, "kv_dtype", None) or getattr(getattr(runtime, "k_cache", None), "dtype", None)
             or getattr(getattr(cache, "k", None), "dtype", None))
    if dtype is None:
        return "unknown"
    name = str(dtype).removeprefix("torch.")
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(name, name)


def prefill_ubatch(runtime, n_prompt: int) -> int:
    """Tokens per prefill forward: the runtime module's PREFILL_CHUNK where it has one, else the whole prompt."""
    import sys

    chunk = getattr(sys.modules.get(type(runtime).__module__), "PREFILL_CHUNK", None)
    return min(n_prompt, int(chunk)) if isinstance(chunk, int) and chunk > 0 else n_prompt


def timing_stats(samples_ns: list[int], n_tokens: int) -> dict:
    """llama-bench's averages: mean and sample stddev of ns, and of tokens/s per repetition."""
    ts = [1e9 * n_tokens / ns for ns in samples_ns]
    multi = len(samples_ns) > 1
    return {
        "avg_ns": int(statistics.fmean(samples_ns)),
        "stddev_ns": int(statistics.stdev(samples_ns)) if multi else 0,
        "avg_ts": statistics.fmean(ts),
        "stddev_ts": statistics.stdev(ts) if multi else 0.0,
        "samples_ns": list(samples_ns),
        "samples_ts": ts,
    }


def decode_loop_of(row: dict) -> str | None:
    """The row's decode loop: as recorded, else "synced" for a row that generates (every row from before the field,
    and llama-bench's, synchronized after every token); None for a pp row, which never decodes."""
    if not row.get("n_gen"):
        return None
    return row.get("decode_loop") or "synced"


def options_fields(options, decode_loop: str | None = None) -> dict:
    """The switches of a row, and its `options` label: the fault label, then graphs, nvtx, ..., and "in-flight" for
    a test decoded in flight (a synced row keeps the label every row had before the loop was a parameter)."""
    labels = [options.label()]
    if options.cuda_graphs:
        labels.append("graphs")
    if options.nvtx:
        labels.append("nvtx")
    if options.kv_type != "f32":
        labels.append(f"kv={options.kv_type}")
    if not options.fused:
        labels.append("unfused")
    if options.pdl:
        labels.append("pdl")
    if decode_loop == "in-flight":
        labels.append("in-flight")
    label = ",".join(x for x in labels if x != "clean" or len(labels) == 1)
    return {"mask": options.mask, "scalar_upload": options.scalar_upload, "sync_every_op": options.sync_every_op,
            "inject": options.inject or "none", "cuda_graphs": options.cuda_graphs,
            "prefill_graphs": options.prefill_graphs, "nvtx": options.nvtx,
            "kv_type": options.kv_type, "fused": options.fused, "pdl": options.pdl, "decode_loop": decode_loop,
            "options": label}


def ordered(row: dict) -> dict:
    """The row in FIELDS order, every field present (None where unknown), extra keys kept at the end."""
    out = {name: row.get(name) for name in FIELDS}
    out.update({k: v for k, v in row.items() if k not in out})
    return out
