"""The single table of per-quant-type traits: block layout and the launch shapes kernels assume.

Every kernel launch config is derived from this table. A launch that disagrees with what
a kernel assumes does not fail, it silently leaves outputs unwritten (the bug qprof was
built to expose), so nothing else in the code may hard-code these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from qprof.errors import UnsupportedError


@dataclass(frozen=True)
class QuantTraits:
    name: str
    ggml_type: int  # GGMLQuantizationType value stored in GGUF files
    block_values: int  # values per block (1 for plain float types)
    block_bytes: int  # bytes per block
    family: str  # "float", "legacy" (32-value blocks) or "kquant" (256-value superblocks)
    # Dequantize kernel: threads cooperating on one quant block (blockDim.x). Each thread
    # writes block_values // dequant_threads values. Launching fewer leaves values unwritten.
    dequant_threads: int
    # Matrix-vector kernel (decode, batch 1..8): CUDA threads per CTA (whole warps) and output rows
    # per CTA. Quantized types: 16 warps of one row pair each (kernels/matvec_core.cuh); float types:
    # 4 rows per 128 threads, each thread reusing its x values across the rows.
    matvec_threads: int = 512
    matvec_rows_per_cta: int = 32
    # Matvecs of the streaming types pass each warp's two rows through shared memory in stages of this
    # many blocks per row (one lane task per lane: 32 / the type's lane tasks per block, kernels/
    # quant_codes.cuh qc_streams); kernels.py sizes the dynamic shared memory from it. 0: the type
    # reads its weights straight from global memory (every type but Q3_K).
    matvec_stage_blocks: int = 0

    @property
    def values_per_dequant_thread(self) -> int:
        return self.block_values // self.dequant_threads

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_values

    def row_bytes(self, n_cols: int) -> int:
        """Bytes of one row of n_cols values; n_cols must be a multiple of block_values."""
        if n_cols % self.block_values:
            raise UnsupportedError(
                f"{self.name} needs rows that are a multiple of {self.block_values} values, got {n_cols}"
            )
        return n_cols // self.block_values * self.block_bytes


_TABLE: tuple[QuantTraits, ...] = (
    QuantTraits("F32", 0, 1, 4, "float", dequant_threads=1, matvec_threads=128, matvec_rows_per_cta=4),
    QuantTraits("F16", 1, 1, 2, "float", dequant_threads=1, matvec_threads=128, matvec_rows_per_cta=4),
    QuantTraits("BF16", 30, 1, 2, "float", dequant_threads=1, matvec_threads=128, matvec_rows_per_cta=4),
    # Legacy: each dequant thread decodes one run of 4 contiguous values -> 8 threads per block.
    QuantTraits("Q4_0", 2, 32, 18, "legacy", dequant_threads=8),
    QuantTraits("Q4_1", 3, 32, 20, "legacy", dequant_threads=8),
    QuantTraits("Q5_0", 6, 32, 22, "legacy", dequant_threads=8),
    QuantTraits("Q5_1", 7, 32, 24, "legacy", dequant_threads=8),
    QuantTraits("Q8_0", 8, 32, 34, "legacy", dequant_threads=8),
    # K-quants: one superblock of 256 values; 8 values (Q4_K) or 4 values (the rest) per dequant thread.
    # The kernels mirror these numbers at compile time (kernels/quant_blocks.cuh, checked by a test).
    QuantTraits("Q2_K", 10, 256, 84, "kquant", dequant_threads=64),
    QuantTraits("Q3_K", 11, 256, 110, "kquant", dequant_threads=64, matvec_stage_blocks=8),
    QuantTraits("Q4_K", 12, 256, 144, "kquant", dequant_threads=32),
    QuantTraits("Q5_K", 13, 256, 176, "kquant", dequant_threads=64),
    QuantTraits("Q6_K", 14, 256, 210, "kquant", dequant_threads=64),
)

QUANT_TRAITS: dict[str, QuantTraits] = {t.name: t for t in _TABLE}
_BY_GGML_TYPE: dict[int, QuantTraits] = {t.ggml_type: t for t in _TABLE}

QUANTIZED_TYPES: tuple[str, ...] = tuple(t.name for t in _TABLE if t.family != "float")
FLOAT_TYPES: tuple[str, ...] = tuple(t.name for t in _TABLE if t.family == "float")
ALL_TYPES: tuple[str, ...] = tuple(t.name for t in _TABLE)


def traits(name: str) -> QuantTraits:
    """Traits for a type name such as "Q4_K"; a clear error for anything unsupported."""
    try:
        return QUANT_TRAITS[name.upper()]
    except KeyError:
        raise UnsupportedError(
            f"unsupported tensor type {name!r}; supported: {', '.join(ALL_TYPES)}"
        ) from None


def traits_for_ggml_type(ggml_type: int) -> QuantTraits:
    try:
        return _BY_GGML_TYPE[int(ggml_type)]
    except KeyError:
        raise UnsupportedError(
            f"unsupported GGML tensor type id {ggml_type}; supported: {', '.join(ALL_TYPES)}"
        ) from None
