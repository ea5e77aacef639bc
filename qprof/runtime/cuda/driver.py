"""A thin, checked layer over the CUDA driver API (cuda.bindings) that shares torch's context.

torch owns every allocation and the current stream; this module compiles kernels/ to PTX
(NVRTC, falling back to nvcc), caches the PTX on disk by source hash + arch + options, loads
modules into torch's primary context and launches with every return code checked. A failed
launch names the kernel, its grid/block and the shapes of its tensor arguments.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from qprof.errors import QprofError

KERNEL_DIR = Path(__file__).resolve().parents[3] / "kernels"
DEFAULT_OPTIONS = ("--std=c++17", "-lineinfo", "--use_fast_math")
DEFAULT_DYNAMIC_SHARED = 48 * 1024  # what a launch may ask for without cuFuncSetAttribute
KERNEL_DEFINES_ENV = "QPROF_KERNEL_DEFINES"  # extra -DNAME[=VALUE] words: an experiment's kernel build


class CudaError(QprofError):
    """A CUDA driver or NVRTC call failed."""


def cache_dir() -> Path:
    from qprof.paths import cache_root

    path = cache_root() / "ptx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as exc:  # a declared dependency; say what to install
        raise CudaError(f"cuda-python is not installed ({exc}); run `pip install cuda-bindings`") from None
    return driver


def _error_name(err) -> str:
    drv = _driver()
    res, name = drv.cuGetErrorName(err)
    if res == drv.CUresult.CUDA_SUCCESS:
        return name.decode() if isinstance(name, bytes) else str(name)
    return str(err)


def check(result, what: str):
    """Check a cuda.bindings return tuple (err, *values); return the values."""
    drv = _driver()
    err = result[0]
    if err != drv.CUresult.CUDA_SUCCESS:
        raise CudaError(f"{what} failed: {_error_name(err)}")
    values = result[1:]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def require_cuda() -> None:
    """One line instead of a traceback when there is no GPU."""
    if not torch.cuda.is_available():
        raise QprofError("no CUDA GPU available (torch.cuda.is_available() is False); use --device cpu")


def device_arch(device: int | None = None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


# --------------------------------------------------------------------------- compilation


def kernel_sources() -> list[Path]:
    return sorted(KERNEL_DIR.glob("*.cu"))


def source_digest(source: Path, arch: str, options: tuple[str, ...]) -> str:
    """Hash of the file, every header in kernels/, the target arch and the options."""
    h = hashlib.sha256()
    h.update(source.read_bytes())
    for header in sorted(KERNEL_DIR.glob("*.cuh")):
        h.update(header.name.encode())
        h.update(header.read_bytes())
    h.update(arch.encode())
    h.update("\0".join(options).encode())
    return h.hexdigest()[:24]


def _nvrtc_compile(source: Path, arch: str, options: tuple[str, ...]) -> bytes:
    from cuda.bindings import nvrtc

    def ck(result, what):
        err = result[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CudaError(f"NVRTC {what} failed for {source.name}: {err}")
        return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)

    prog = ck(nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], []), "create")
    opts = [f"--gpu-architecture=compute_{arch}".encode(), f"-I{KERNEL_DIR}".encode()]
    opts += [o.encode() for o in options]
    res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if res[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        size = ck(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        ck(nvrtc.nvrtcGetProgramLog(prog, log), "log")
        first = next((ln for ln in log.decode(errors="replace").splitlines() if "error" in ln), "see log")
        raise CudaError(f"compiling {source.name} for sm_{arch} failed: {first.strip()}")
    size = ck(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
    ptx = b" " * size
    ck(nvrtc.nvrtcGetPTX(prog, ptx), "get PTX")
    nvrtc.nvrtcDestroyProgram(prog)
    return ptx.rstrip(b"\0 ") + b"\0"


def nvcc_compile(source: Path, arch: str, options: tuple[str, ...], nvcc: str | None = None) -> bytes:
    nvcc = nvcc or shutil.which("nvcc")
    if not nvcc:
        raise CudaError("neither NVRTC nor nvcc is available to compile the kernels")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (source.stem + ".ptx")
        cmd = [nvcc, "--ptx", f"-arch=compute_{arch}", f"-I{KERNEL_DIR}", *options, "-o", str(out), str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
            raise CudaError(f"nvcc failed on {source.name} for sm_{arch}: {first.strip()}")
        return out.read_bytes() + b"\0"


def ptx_cache_path(source: Path, arch: str, options: tuple[str, ...] = DEFAULT_OPTIONS) -> Path:
    """Where the PTX of one kernels/*.cu file lives in the disk cache (shared with `qprof kernels build`)."""
    return cache_dir() / f"{source.stem}-sm{arch}-{source_digest(source, arch, options)}.ptx"


def compile_to_ptx(source: Path, arch: str, options: tuple[str, ...] = DEFAULT_OPTIONS) -> tuple[bytes, Path]:
    """PTX for one kernels/*.cu file, from the disk cache when the hash matches."""
    cached = ptx_cache_path(source, arch, options)
    if cached.exists():
        return cached.read_bytes(), cached
    try:
        ptx = _nvrtc_compile(source, arch, options)
    except (ImportError, OSError, RuntimeError):  # no loadable NVRTC here: nvcc does the same job
        ptx = nvcc_compile(source, arch, options)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")  # workers on one host (bench --gpus) may compile at once
    tmp.write_bytes(ptx)
    tmp.replace(cached)
    return ptx, cached


# --------------------------------------------------------------------------- modules and launches


def ensure_context() -> None:
    """Make torch's primary context current for the driver API on this thread."""
    require_cuda()
    drv = _driver()
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # forces torch to create and bind its primary context
    check(drv.cuInit(0), "cuInit")
    ctx = check(drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if ctx is None or int(ctx) == 0:
        dev = check(drv.cuDeviceGet(torch.cuda.current_device()), "cuDeviceGet")
        ctx = check(drv.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        check(drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


_PTX_FUNCTION = re.compile(rb"^\s*(?:\.visible\s+|\.weak\s+)?\.(entry|func)\s+(?:\([^)]*\)\s*)?(\w+)", re.MULTILINE)


def entries_waiting_upstream(ptx: bytes) -> set[str]:
    """The kernels (.entry) of a PTX module whose body holds griddepcontrol.wait (kernels/pdl.cuh):
    those, and only those, may be launched as programmatic dependents of the kernel before them."""
    found = list(_PTX_FUNCTION.finditer(ptx))
    waiting = set()
    for m, nxt in zip(found, found[1:] + [None]):
        body = ptx[m.end(): nxt.start() if nxt is not None else len(ptx)]
        if m.group(1) == b"entry" and b"griddepcontrol.wait" in body:
            waiting.add(m.group(2).decode())
    return waiting


@dataclass
class Kernel:
    name: str
    module_file: str
    handle: object  # CUfunction
    waits_upstream: bool = False  # its body waits on the previous kernel (kernels/pdl.cuh)

    def __repr__(self) -> str:
        return f"Kernel({self.name} from {self.module_file})"


def _describe(args) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append(f"{str(a.dtype).replace('torch.', '')}{list(a.shape)}")
        else:
            parts.append(repr(getattr(a, "value", a)))
    return ", ".join(parts)


def _pack(args, kernel_name: str):
    holders = []
    for a in args:
        if a is None:  # an optional pointer argument left out
            holders.append(ctypes.c_void_p(0))
        elif isinstance(a, torch.Tensor):
            if not a.is_cuda:
                raise CudaError(f"{kernel_name}: tensor argument {list(a.shape)} is not on the GPU")
            holders.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, bool):
            holders.append(ctypes.c_int(int(a)))
        elif isinstance(a, int):
            holders.append(ctypes.c_int(a))
        elif isinstance(a, float):
            holders.append(ctypes.c_float(a))
        elif isinstance(a, (ctypes._SimpleCData, ctypes.Structure)):  # a struct goes by value
            holders.append(a)
        else:
            raise CudaError(f"{kernel_name}: unsupported kernel argument type {type(a).__name__}")
    array = (ctypes.c_void_p * max(len(holders), 1))(*[ctypes.addressof(h) for h in holders])
    return holders, array


def kernel_options() -> tuple[str, ...]:
    """The runtime's compile options: DEFAULT_OPTIONS plus $QPROF_KERNEL_DEFINES (an experiment, e.g.
    -DQP_MV_WARM_BYTES=0: the kernels' tuning macros without editing them; the PTX cache keys on them)."""
    extra = tuple(os.environ.get(KERNEL_DEFINES_ENV, "").split())
    bad = next((w for w in extra if not w.startswith("-D") or len(w) < 3), None)
    if bad is not None:
        raise QprofError(f"{KERNEL_DEFINES_ENV}: {bad!r} is not a -DNAME[=VALUE] option")
    return DEFAULT_OPTIONS + extra


class KernelLibrary:
    """Loads every kernels/*.cu module once per process and hands out checked launches."""

    _instance: KernelLibrary | None = None

    def __init__(self, options: tuple[str, ...] | None = None):
        ensure_context()
        self.arch = device_arch()
        self.options = kernel_options() if options is None else options
        self._modules: dict[str, object] = {}
        self._kernels: dict[str, Kernel] = {}
        self.sync_after_launch = os.environ.get("QPROF_SYNC_CHECK") == "1"
        self.launch_count = 0
        self._shared_allowed: dict[str, int] = {}  # dynamic shared bytes a launch of each kernel may ask for
        self._waiting: dict[str, set[str]] = {}  # module -> its kernels that wait on the one before
        self.programmatic = False  # launch waiting kernels as programmatic dependents (see programmatic_launches)

    @classmethod
    def get(cls) -> KernelLibrary:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _module(self, file_stem: str):
        if file_stem not in self._modules:
            source = KERNEL_DIR / f"{file_stem}.cu"
            if not source.exists():
                raise CudaError(f"kernel source {source} not found")
            ptx, _ = compile_to_ptx(source, self.arch, self.options)
            drv = _driver()
            self._modules[file_stem] = check(drv.cuModuleLoadData(ptx), f"cuModuleLoadData({source.name})")
            self._waiting[file_stem] = entries_waiting_upstream(ptx)
        return self._modules[file_stem]

    def kernel(self, file_stem: str, name: str) -> Kernel:
        key = f"{file_stem}:{name}"
        if key not in self._kernels:
            drv = _driver()
            handle = check(drv.cuModuleGetFunction(self._module(file_stem), name.encode()),
                           f"cuModuleGetFunction({name} in {file_stem}.cu)")
            self._kernels[key] = Kernel(name, file_stem + ".cu", handle, name in self._waiting[file_stem])
        return self._kernels[key]

    @contextmanager
    def programmatic_launches(self, enabled: bool = True):
        """Inside: every kernel that waits on the one before (kernels/pdl.cuh) is launched as its
        programmatic dependent (sm_90), so it starts beside that kernel's tail; others launch as always.
        Stream capture keeps the launches' programmatic edges in the graph."""
        before, self.programmatic = self.programmatic, enabled
        try:
            yield
        finally:
            self.programmatic = before

    def launch(self, kernel: Kernel, grid, block, *args, shared_bytes: int = 0, stream=None) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if min(grid) <= 0 or min(block) <= 0:
            raise CudaError(f"{kernel.name}: empty launch grid={grid} block={block} args=({_describe(args)})")
        if shared_bytes:
            self.allow_shared(kernel, shared_bytes)
        drv = _driver()
        holders, array = _pack(args, kernel.name)
        stream_handle = torch.cuda.current_stream().cuda_stream if stream is None else stream
        if self.programmatic and kernel.waits_upstream:
            err = drv.cuLaunchKernelEx(_programmatic_config(drv, grid, block, shared_bytes, stream_handle),
                                       kernel.handle, ctypes.addressof(array), 0)[0]
        else:
            err = drv.cuLaunchKernel(kernel.handle, *grid, *block, shared_bytes, drv.CUstream(stream_handle),
                                     ctypes.addressof(array), 0)[0]
        self.launch_count += 1
        if err == drv.CUresult.CUDA_SUCCESS and self.sync_after_launch:
            err = drv.cuStreamSynchronize(drv.CUstream(stream_handle))[0]
        if err != drv.CUresult.CUDA_SUCCESS:
            raise CudaError(
                f"launch of {kernel.name} ({kernel.module_file}) grid={grid} block={block} "
                f"smem={shared_bytes} args=({_describe(args)}) failed: {_error_name(err)}"
            )
        del holders

    def set_max_dynamic_shared(self, kernel: Kernel, n_bytes: int) -> None:
        drv = _driver()
        attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        check(drv.cuFuncSetAttribute(kernel.handle, attr, n_bytes), f"cuFuncSetAttribute({kernel.name})")

    def allow_shared(self, kernel: Kernel, n_bytes: int) -> None:
        """Opt the kernel in to n_bytes of dynamic shared memory where that and its static shared memory pass
        the default 48 KiB (a launch of 48 KiB dynamic beside any static fails without it)."""
        allowed = self._shared_allowed.get(kernel.name)
        if allowed is None:  # first sight: what a launch gets without opting in, beside its static memory
            drv = _driver()
            static = check(drv.cuFuncGetAttribute(drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                                                  kernel.handle), f"cuFuncGetAttribute({kernel.name})")
            allowed = self._shared_allowed[kernel.name] = DEFAULT_DYNAMIC_SHARED - static
        if n_bytes > allowed:
            self.set_max_dynamic_shared(kernel, n_bytes)
            self._shared_allowed[kernel.name] = n_bytes


def _programmatic_config(drv, grid, block, shared_bytes: int, stream_handle):
    """cuLaunchKernelEx's configuration for a launch that may start before the previous kernel ends."""
    attr = drv.CUlaunchAttribute()
    attr.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    cfg = drv.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = grid
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = block
    cfg.sharedMemBytes = shared_bytes
    cfg.hStream = drv.CUstream(stream_handle)
    cfg.attrs = [attr]
    cfg.numAttrs = 1
    return cfg


def synchronize() -> None:
    """Checked device synchronize: surfaces asynchronous launch errors as one line."""
    drv = _driver()
    check(drv.cuCtxSynchronize(), "cuCtxSynchronize (an earlier kernel may have faulted)")
