"""Which GPUs this host has and which --gpus picks, and the placement fields (host, GPU) every row carries."""

from __future__ import annotations

import contextlib
import os
import socket

from qprof.bench.params import split_list
from qprof.bench.slices import GpuInfo
from qprof.errors import QprofError


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_gpus(nvml) -> list[GpuInfo]:
    nvml.nvmlInit()
    out = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        out.append(GpuInfo(i, _text(nvml.nvmlDeviceGetName(handle)), _text(nvml.nvmlDeviceGetUUID(handle))))
    return out


def _torch_gpus() -> list[GpuInfo]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        uuid = str(getattr(torch.cuda.get_device_properties(i), "uuid", "") or "") or None
        if uuid and not uuid.startswith("GPU-"):
            uuid = f"GPU-{uuid}"
        out.append(GpuInfo(i, torch.cuda.get_device_name(i), uuid))
    return out


def _visible(gpus: list[GpuInfo], visible: str) -> list[GpuInfo]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to this process (it lists indices or UUIDs, maybe shortened)."""
    out = []
    for item in split_list(visible):
        for gpu in gpus:
            same = int(item) == gpu.index if item.isdigit() else bool(gpu.uuid and gpu.uuid.startswith(item))
            if same and gpu not in out:
                out.append(gpu)
    return out


def list_gpus(nvml=None) -> list[GpuInfo]:
    """Every GPU this process may use, numbered as nvidia-smi numbers them (NVML, PCI order).

    NVML sees every board regardless of CUDA_VISIBLE_DEVICES, so where that is set (a Slurm allocation,
    a shared box) only the boards it names are kept. Without NVML, torch's view is used instead.
    """
    try:
        if nvml is None:
            import pynvml as nvml
        gpus = _nvml_gpus(nvml)
    except Exception:  # noqa: BLE001 -- no pynvml, no driver, NVML refuses: ask torch (which honours the mask)
        return _torch_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return gpus if visible is None else _visible(gpus, visible)


def select_gpus(text: str, gpus: list[GpuInfo]) -> list[GpuInfo]:
    """--gpus all|0,1,…: the GPUs asked for, each once, in the order given."""
    if text.strip().lower() == "all":
        return list(gpus)
    items = split_list(text)
    if not items:
        raise QprofError("--gpus needs 'all' or a comma list of GPU indices such as 0,1")
    by_index = {g.index: g for g in gpus}
    chosen: list[GpuInfo] = []
    for item in items:
        if not item.isdigit():
            raise QprofError(f"--gpus: {item!r} is not a GPU index (expected 'all' or a list such as 0,1)")
        index = int(item)
        if gpus and index not in by_index:
            have = ", ".join(str(g.index) for g in gpus)
            raise QprofError(f"--gpus: there is no GPU {index} here (this host has GPU {have}; see nvidia-smi)")
        gpu = by_index.get(index, GpuInfo(index))
        if gpu not in chosen:  # one worker per GPU, never two
            chosen.append(gpu)
    return chosen


def host_name() -> str:
    return socket.gethostname()


def placement_fields(gpu: GpuInfo | None) -> dict:
    """host, gpu_index and gpu_uuid for a row (gpu_name comes from the runtime's own environment)."""
    return {"host": host_name(), "gpu_index": gpu.index if gpu else None, "gpu_uuid": gpu.uuid if gpu else None}


def current_gpu(device: str, reader=None) -> GpuInfo | None:
    """The GPU this process runs on, as NVML numbers it: from the telemetry reader's handle where there is
    one, else torch's device 0 (a pinned worker sees only its own GPU)."""
    if device != "cuda":
        return None
    if reader is not None:
        nvml, handle = reader.nvml, reader.handle
        with contextlib.suppress(Exception):  # a partial NVML (or a test's fake): ask torch instead
            return GpuInfo(int(nvml.nvmlDeviceGetIndex(handle)), _text(nvml.nvmlDeviceGetName(handle)),
                           _text(nvml.nvmlDeviceGetUUID(handle)))
    with contextlib.suppress(Exception):  # torch that says CUDA is there but cannot describe it
        gpus = _torch_gpus()
        return gpus[0] if gpus else None
    return None
