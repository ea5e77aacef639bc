"""Names, handles and launch shapes of the quantized kernels, all derived from the quant traits table.

The kernels in kernels/dequant.cu and kernels/matvec.cu are templates whose thread counts are
compile-time constants mirrored from qprof/quant/traits.py (kernels/quant_blocks.cuh holds the
mirror; a test checks the two agree). Every launch shape here comes from QuantTraits, never from a
per-call constant, because a launch that disagrees with a kernel's assumption writes garbage
silently rather than failing.

Kernel names are `<family>_<qtype>[_<variant>]` (dequant_q4_k_f16, get_rows_q8_0, matvec_q6_k_b1)
so the profiler can group kernels by family and quant type from the name alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qprof.errors import QprofError
from qprof.quant.traits import ALL_TYPES, QUANT_TRAITS, QuantTraits, traits

KERNEL_DIR = Path(__file__).resolve().parents[3] / "kernels"
TRAITS_HEADER = KERNEL_DIR / "quant_blocks.cuh"

# Which .cu file holds each family.
FAMILY_FILES: dict[str, str] = {"dequant": "dequant", "get_rows": "dequant", "matvec": "matvec",
                                "matvec_gate_up": "matvec_fused"}
FUSED_FILE = "matvec_fused"
QKV_KERNEL = "matvec_qkv"  # one kernel for every mix of quantized types (dispatched per segment on the device)
# (Q/K type, V type) pairs with a kernel of their own, matvec_qkv_<qk>_v_<v> (kernels/matvec_fused.cu)
QKV_V_PAIRS = (("Q4_K", "Q6_K"), ("Q5_K", "Q6_K"), ("Q3_K", "Q4_K"), ("Q3_K", "Q5_K"), ("Q2_K", "Q3_K"),
               ("Q2_K", "Q4_K"))


def qkv_kernel_name(q: str, k: str, v: str) -> str:
    """The most specific fused QKV kernel for these quant types: one type, a Q/K + V pair, else generic."""
    if q == k == v:
        return f"{QKV_KERNEL}_{q.lower()}"
    if q == k and (q, v) in QKV_V_PAIRS:
        return f"{QKV_KERNEL}_{q.lower()}_v_{v.lower()}"
    return QKV_KERNEL
MATVEC_MAX_BATCH = 8
QUANTIZE_THREADS = 256  # quantize_q16 / quantize_q8: one warp per 32 values
QUANTIZE_VALUES_PER_CTA = QUANTIZE_THREADS
MATVEC_COL_MULTIPLE = 16  # matvec threads step through rows 16 values at a time (kernels/matvec.cu)
DEQUANT_CTA_THREADS = 256  # threads per dequant CTA; blockDim.y = this // dequant_threads
MAX_CTA_THREADS = 1024
GRID_Y_MAX = 65535

# The seed's bug: a dequantize launch that assumed one warp per quant block.
INJECT_BLOCK_DIM = 32


@dataclass(frozen=True)
class LaunchConfig:
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int = 0  # dynamic shared memory

    @property
    def threads_per_cta(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


def kernel_name(family: str, qtype: str, variant: str | None = None) -> str:
    if family not in FAMILY_FILES:
        raise QprofError(f"unknown quantized kernel family {family!r}; known: {', '.join(FAMILY_FILES)}")
    name = f"{family}_{traits(qtype).name.lower()}"
    return f"{name}_{variant}" if variant else name


_NAME_RE = re.compile(
    r"^(?P<family>" + "|".join(sorted(FAMILY_FILES, key=len, reverse=True)) + r")_(?P<qtype>"
    + "|".join(t.lower() for t in sorted(ALL_TYPES, key=len, reverse=True)) + r")(?:_(?P<variant>[a-z0-9]+))?$"
)


def parse_kernel_name(name: str) -> tuple[str, str, str | None] | None:
    """(family, QTYPE, variant) for one of this module's kernel names, else None."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    return m.group("family"), m.group("qtype").upper(), m.group("variant")


def inject_affected_types() -> tuple[str, ...]:
    """Types whose dequantize output the block-dim fault leaves partly unwritten (from the traits table)."""
    return tuple(t.name for t in QUANT_TRAITS.values() if t.dequant_threads > INJECT_BLOCK_DIM)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def dequant_launch(t: QuantTraits, n_blocks: int, inject: str | None = None) -> LaunchConfig:
    """blockDim.x = threads per quant block, blockDim.y = quant blocks per CTA, one block per y-thread.

    With inject="block-dim" blockDim.x is INJECT_BLOCK_DIM whatever the type expects: the kernel
    idles threads past its own count and leaves values past INJECT_BLOCK_DIM threads unwritten.
    """
    per_cta = max(1, DEQUANT_CTA_THREADS // t.dequant_threads)
    if inject is None:
        bx = t.dequant_threads
    elif inject == "block-dim":
        bx = INJECT_BLOCK_DIM
    else:
        raise QprofError(f"unknown fault {inject!r}; choose from block-dim")
    by = max(1, min(per_cta, MAX_CTA_THREADS // bx))
    return LaunchConfig((_ceil_div(n_blocks, by), 1, 1), (bx, by, 1))


def get_rows_launch(t: QuantTraits, blocks_per_row: int, n_ids: int) -> LaunchConfig:
    if n_ids > GRID_Y_MAX:
        raise QprofError(f"get_rows takes at most {GRID_Y_MAX} ids per call, got {n_ids}")
    per_cta = max(1, DEQUANT_CTA_THREADS // t.dequant_threads)
    by = min(per_cta, blocks_per_row)
    return LaunchConfig((_ceil_div(blocks_per_row, by), n_ids, 1), (t.dequant_threads, by, 1))


# The quantized matvecs' weight stream (kernels/matvec_core.cuh): each warp's ring of stages in
# dynamic shared memory. MATVEC_STAGES stages (three in flight while one decodes) where they fit in
# MATVEC_SHARED_BUDGET, which leaves room for two resident CTAs per SM on the H100/H200 (228 KiB
# per SM, 1 KiB reserved per CTA, ~1.2 KiB of static shared memory); fewer stages otherwise, one
# at the least. The kernel counts the stages from the size it is given, so this sets depth only.
MATVEC_STAGES = 4
MATVEC_SHARED_BUDGET = 110 * 1024


def matvec_stage_bytes(t: QuantTraits) -> int:
    """Shared memory of one stage of two rows (Stage<T>::BYTES): each row's blocks, rounded to 16
    bytes, plus 16 for the aligned span's slack."""
    return 2 * (_ceil_div(t.matvec_stage_blocks * t.block_bytes, 16) * 16 + 16)


def matvec_shared_bytes(types: tuple[QuantTraits, ...], threads: int) -> int:
    """Dynamic shared memory of a quantized matvec CTA whose warps read rows of any of `types`: the
    ring of the widest streaming type's stages; 0 where none of them streams (matvec_stage_blocks 0)."""
    streaming = [t for t in types if t.matvec_stage_blocks]
    if not streaming:
        return 0
    stage = max(matvec_stage_bytes(t) for t in streaming)
    warps = threads // 32
    stages = max(1, min(MATVEC_STAGES, MATVEC_SHARED_BUDGET // (warps * stage)))
    return warps * stages * stage


def _matvec_cfg(t: QuantTraits, rows: int, types: tuple[QuantTraits, ...] | None = None) -> LaunchConfig:
    shared = matvec_shared_bytes(types or (t,), t.matvec_threads)  # 0 for types that do not stream (floats too)
    return LaunchConfig((_ceil_div(rows, t.matvec_rows_per_cta), 1, 1), (t.matvec_threads, 1, 1), shared)


def matvec_launch(t: QuantTraits, rows: int) -> LaunchConfig:
    return _matvec_cfg(t, rows)


def gate_up_launch(t: QuantTraits, rows: int) -> LaunchConfig:
    """Fused gate+up: each warp computes two rows of each matrix in turn, so a CTA covers as many rows as a matvec CTA."""
    return _matvec_cfg(t, rows)


def qkv_launch(types: tuple[QuantTraits, ...], rows: int) -> LaunchConfig:
    """Fused QKV over segments of these types: matvec CTAs whose ring fits the widest type's stage."""
    return _matvec_cfg(types[0], rows, types)


def xq_planes(batch: int) -> int:
    """Byte planes of the quantized activations (kernels/matvec_qvec.cuh XPlanes): 16-bit at batch 1, else 8-bit."""
    return 2 if batch == 1 else 1


def xq_column_bytes(planes: int, cols: int) -> int:
    """Bytes of one QVec column (qp_xq_column_bytes in matvec_qvec.cuh): planes, scales, sums, norm partials."""
    return (planes * cols + cols // 32 * 4 + cols // 16 * 4 + cols // 32 * 4 + 15) // 16 * 16




def kernel(family: str, qtype: str, variant: str | None = None):
    """The loaded kernel handle (compiles and caches the module on first use)."""
    from qprof.runtime.cuda.driver import KernelLibrary

    return KernelLibrary.get().kernel(FAMILY_FILES[family], kernel_name(family, qtype, variant))


# ------------------------------------------------------------------ the compile-time mirror

_MIRROR_FIELDS = ("name", "ggml_type", "block_values", "block_bytes", "dequant_threads",
                  "matvec_threads", "matvec_rows_per_cta", "matvec_stage_blocks")
_MIRROR_ROW = re.compile(r"X\((\w+),\s*(\w+)" + r",\s*(\d+)" * 7 + r"\)")


def kernel_traits_mirror(header: Path = TRAITS_HEADER) -> dict[str, dict[str, int | str]]:
    """The QPROF_QUANT_TYPES table of kernels/quant_blocks.cuh, as {type: {field: value}}."""
    text = header.read_text()
    start = text.find("#define QPROF_QUANT_TYPES(X)")
    if start < 0:
        raise QprofError(f"{header.name}: QPROF_QUANT_TYPES table not found")
    block = text[start:text.find("\n\n", start)]
    table: dict[str, dict[str, int | str]] = {}
    for m in _MIRROR_ROW.finditer(block):
        name, lower, *nums = m.groups()
        if lower != name.lower():
            raise QprofError(f"{header.name}: {name} has kernel suffix {lower!r}, expected {name.lower()!r}")
        table[name] = dict(zip(_MIRROR_FIELDS, [name, *map(int, nums)]))
    return table


def mirror_mismatches(header: Path = TRAITS_HEADER) -> list[str]:
    """Every disagreement between the traits table and the kernels' compile-time mirror of it."""
    mirror = kernel_traits_mirror(header)
    problems = [f"{n} missing from {header.name}" for n in QUANT_TRAITS if n not in mirror]
    problems += [f"{n} in {header.name} but not in the traits table" for n in mirror if n not in QUANT_TRAITS]
    for name, row in mirror.items():
        t = QUANT_TRAITS.get(name)
        if t is None:
            continue
        for field in _MIRROR_FIELDS[1:]:
            if getattr(t, field) != row[field]:
                problems.append(f"{name}.{field}: traits {getattr(t, field)} != kernel {row[field]}")
    return problems
