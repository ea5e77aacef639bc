"""Per-kernel resources from ptxas: registers, shared memory, stack, spills and code size, for every kernels/*.cu.

The PTX is the same the runtime loads (the disk cache of driver.compile_to_ptx, filled by nvcc when
missing); `ptxas -v` assembles it for the target arch and reports each entry function. A spill
(local-memory stores/loads the register allocator had to add) in a per-token kernel is a
performance bug that no correctness test sees, so CI fails on any. The code size (the entry's
.text section in the cubin ptxas writes) matters too: a decode kernel's instructions are fetched
again at every launch, and on the H200 64 KB of straight-line code cost 3.3 us more than the same
work as a loop (tests/gpu/bench_attention.py --fetch, 2026-12-01).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from qprof.errors import QprofError

CUDA_BIN_DIRS = ("/usr/local/cuda/bin", "/usr/local/bin")
DEFAULT_ARCH = "90"


@dataclass(frozen=True)
class KernelResources:
    name: str
    source: str  # the .cu file
    arch: str
    registers: int
    smem_bytes: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    barriers: int
    code_bytes: int = 0  # the entry's SASS (.text.<name> in the cubin); 0 where unknown

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    def as_dict(self) -> dict:
        return asdict(self)


def find_tool(name: str) -> str | None:
    """nvcc/ptxas from PATH or the usual CUDA locations."""
    found = shutil.which(name)
    if found:
        return found
    for d in CUDA_BIN_DIRS:
        path = Path(d) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise QprofError(f"{name} not found on PATH or in {', '.join(CUDA_BIN_DIRS)}; install the CUDA toolkit")
    return path


def check_arch(arch: str) -> str:
    arch = str(arch).removeprefix("sm_").removeprefix("compute_")
    if not re.fullmatch(r"\d{2,3}a?", arch):
        raise QprofError(f"bad CUDA arch {arch!r}; give the compute capability digits, e.g. 90")
    return arch


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
# ptxas puts "N bytes cumulative stack size" between the barriers and smem where a kernel has a stack
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, \d+ bytes cumulative stack size)?"
                   r"(?:, (\d+) bytes smem)?")


def parse_ptxas_verbose(text: str, source: str = "") -> list[KernelResources]:
    """Entry functions from `ptxas -v` output (non-entry function properties are skipped)."""
    entries: dict[str, str] = {}
    current: str | None = None
    stack = (0, 0, 0)
    out: list[KernelResources] = []
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            entries[m.group(1)] = m.group(2)
            current, stack = m.group(1), (0, 0, 0)
        elif m := _PROPS.search(line):
            current, stack = m.group(1), (0, 0, 0)
        elif m := _STACK.search(line):
            stack = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif (m := _USED.search(line)) and current in entries:
            out.append(KernelResources(current, source, entries[current], int(m.group(1)), int(m.group(3) or 0),
                                       stack[0], stack[1], stack[2], int(m.group(2) or 0)))
            current = None
    return out


def cubin_text_sizes(elf: bytes) -> dict[str, int]:
    """Bytes of each function's code in a cubin (ELF64, little-endian): its .text.<name> section's size.
    Anything that is not such an ELF gives {}."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return {}
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    if shentsize < 64 or shstrndx >= shnum or shoff + shnum * shentsize > len(elf):
        return {}
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    out = {}
    for name_off, *_, size in headers:
        start = names_at + name_off
        name = elf[start:elf.find(b"\0", start)].decode("ascii", "replace")
        if name.startswith(".text."):
            out[name.removeprefix(".text.")] = size
    return out


def run_ptxas(ptx: bytes, arch: str = DEFAULT_ARCH, source: str = "") -> list[KernelResources]:
    ptxas = require_tool("ptxas")
    arch = check_arch(arch)
    with tempfile.TemporaryDirectory() as tmp:
        path, cubin = Path(tmp) / "kernels.ptx", Path(tmp) / "kernels.cubin"
        path.write_bytes(ptx.rstrip(b"\0"))
        proc = subprocess.run([ptxas, f"-arch=sm_{arch}", "-v", "-o", str(cubin), str(path)],
                              check=False, capture_output=True, text=True)
        sizes = cubin_text_sizes(cubin.read_bytes()) if proc.returncode == 0 and cubin.exists() else {}
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
        raise QprofError(f"ptxas failed on {source or 'PTX'} for sm_{arch}: {first.strip()}")
    rows = parse_ptxas_verbose(proc.stderr + proc.stdout, source)
    return [dataclasses.replace(r, code_bytes=sizes.get(r.name, 0)) for r in rows]


def build_ptx(source: Path, arch: str = DEFAULT_ARCH, force: bool = False) -> tuple[Path, bool]:
    """nvcc-compile one kernels/*.cu into the runtime's PTX cache, with the options the runtime will load it with
    (its defaults and $QPROF_KERNEL_DEFINES: driver.kernel_options); (path, whether it was compiled now)."""
    from qprof.runtime.cuda.driver import kernel_options, nvcc_compile, ptx_cache_path

    arch = check_arch(arch)
    options = kernel_options()
    cached = ptx_cache_path(source, arch, options)
    if cached.exists() and not force:
        return cached, False
    ptx = nvcc_compile(source, arch, options, nvcc=require_tool("nvcc"))
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(ptx)
    tmp.replace(cached)
    return cached, True


def kernel_sources(only: str | None = None) -> list[Path]:
    from qprof.runtime.cuda.driver import kernel_sources as all_sources

    sources = all_sources()
    if only is None:
        return sources
    stem = only.removesuffix(".cu")
    picked = [s for s in sources if s.stem == stem]
    if not picked:
        raise QprofError(f"no kernel source {only!r}; have: {', '.join(s.name for s in sources)}")
    return picked


def report(arch: str = DEFAULT_ARCH, only: str | None = None,
           progress: Callable[[str], None] | None = None) -> list[KernelResources]:
    """Resources of every entry function of every (or one) kernels/*.cu file, for sm_<arch>.

    progress(file name) is called after each file (compiling and ptxas take seconds per file)."""
    rows: list[KernelResources] = []
    for source in kernel_sources(only):
        path, _ = build_ptx(source, arch)
        rows += run_ptxas(path.read_bytes(), arch, source.name)
        if progress is not None:
            progress(source.name)
    return rows


def format_report(rows: list[KernelResources]) -> str:
    header = ("kernel", "file", "regs", "smem B", "stack B", "spill st B", "spill ld B", "code B", "")
    body = [(r.name, r.source, str(r.registers), str(r.smem_bytes), str(r.stack_bytes), str(r.spill_stores),
             str(r.spill_loads), str(r.code_bytes), "SPILLS" if r.spills else "") for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    n_spill = sum(r.spills for r in rows)
    arch = rows[0].arch if rows else DEFAULT_ARCH
    lines.append(f"{len(rows)} kernels for sm_{arch}, {n_spill} with spills, max {max((r.registers for r in rows), default=0)} "
                 "registers")
    return "\n".join(lines)
