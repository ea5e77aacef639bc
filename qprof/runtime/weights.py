"""A model's tensors dequantized once to float32 torch tensors (for the CPU reference), within host memory."""

from __future__ import annotations

import os

import torch

from qprof.errors import QprofError
from qprof.quant.dequant import dequantize_torch


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_host_memory(model, fraction: float = 0.8) -> None:
    """A one-line error, rather than the OOM killer, when float32 weights cannot fit in RAM."""
    need = model.n_params * 4
    have = host_memory_bytes()
    if have is not None and need > fraction * have:
        raise QprofError(
            f"{model.path.name}: the CPU reference needs {need / 2**30:.1f} GiB of float32 weights, "
            f"this machine has {have / 2**30:.1f} GiB; use --device cuda or a smaller model"
        )


def dequantize_model(model) -> dict[str, torch.Tensor]:
    """Every tensor of `model` as float32 (qprof's CPU dequantizer, tested bit-exact against gguf-py)."""
    check_fits_in_host_memory(model)
    return {name: dequantize_torch(t) for name, t in model.tensors.items()}
