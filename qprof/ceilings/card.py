"""Which card a ceiling belongs to: GPU name, UUID, driver and memory clock, the key measured figures are cached by."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Card:
    name: str
    uuid: str | None
    driver: str | None
    mem_clock_mhz: int | None  # NVML's maximum memory clock: a board with other memory clocks reads otherwise

    def key(self) -> str:
        """One string per card and configuration; a new driver or memory clock is a new key (measure again)."""
        return " | ".join(str(v) if v not in (None, "") else "?" for v in
                          (self.name, self.uuid, self.driver, self.mem_clock_mhz))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Card:
        return cls(str(d["name"]), d.get("uuid"), d.get("driver"),
                   int(d["mem_clock_mhz"]) if d.get("mem_clock_mhz") is not None else None)


def current_card(device_index: int = 0, nvml_info: dict | None = None) -> Card:
    """The CUDA device torch uses, identified with NVML's facts where NVML answers (nvml_info from NvmlReader.info)."""
    import torch

    from qprof.bench.record import kernel_driver_version
    from qprof.bench.telemetry import cuda_uuid

    nvml_info = nvml_info or {}
    clock = nvml_info.get("max_mem_clock_mhz")
    return Card(name=torch.cuda.get_device_name(device_index), uuid=cuda_uuid(device_index),
                driver=nvml_info.get("driver") or kernel_driver_version(),
                mem_clock_mhz=int(clock) if clock else None)
