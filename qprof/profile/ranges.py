"""NVTX ranges on run -> phase -> token -> layer -> op, with hooks that timing modes attach to.

The runtimes call `annotator.op(...)` around every op. With NVTX off and no listener the
call returns one shared no-op context manager, so the clean path costs a method call.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

DOMAIN = "qprof"
LEVELS = ("run", "phase", "token", "layer", "op")
_NULL = nullcontext()


@dataclass(frozen=True)
class RangeInfo:
    level: str  # one of LEVELS
    message: str  # the NVTX message, e.g. "blk.3.attn_q"
    category: str  # NVTX category: op family and quant type, e.g. "matvec/Q4_K"
    meta: dict = field(default_factory=dict, compare=False)


class RangeListener(Protocol):
    def begin(self, info: RangeInfo) -> None: ...

    def end(self, info: RangeInfo) -> None: ...


def op_category(family: str, qtype: str | None = None) -> str:
    return f"{family}/{qtype}" if qtype else family


class Annotator:
    def __init__(self, nvtx_enabled: bool = True, listeners: tuple[RangeListener, ...] = ()):
        self.listeners = list(listeners)
        self._nvtx = None
        if nvtx_enabled:
            try:
                import nvtx

                self._nvtx = nvtx
            except ImportError:  # nvtx is a declared dependency; without it ranges are simply absent
                self._nvtx = None

    @property
    def active(self) -> bool:
        return self._nvtx is not None or bool(self.listeners)

    @contextmanager
    def _range(self, info: RangeInfo):
        nv = self._nvtx
        if nv is not None:
            nv.push_range(message=info.message, domain=DOMAIN, category=info.category)
        for lis in self.listeners:
            lis.begin(info)
        try:
            yield info
        finally:
            for lis in reversed(self.listeners):
                lis.end(info)
            if nv is not None:
                nv.pop_range(domain=DOMAIN)

    def run(self, name: str = "run"):
        return self._range(RangeInfo("run", name, "run")) if self.active else _NULL

    def phase(self, name: str):
        return self._range(RangeInfo("phase", name, "phase", {"phase": name})) if self.active else _NULL

    def token(self, index: int):
        return self._range(RangeInfo("token", f"token {index}", "token", {"token": index})) if self.active else _NULL

    def layer(self, index: int):
        return self._range(RangeInfo("layer", f"blk.{index}", "layer", {"layer": index})) if self.active else _NULL

    def op(self, name: str, family: str, qtype: str | None = None, **meta):
        if not self.active:
            return _NULL
        info = RangeInfo("op", name, op_category(family, qtype), {"family": family, "qtype": qtype, **meta})
        return self._range(info)


NULL_ANNOTATOR = Annotator(nvtx_enabled=False)
