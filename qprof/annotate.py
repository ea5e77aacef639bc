"""NVTX ranges on run -> phase -> token -> layer -> op, with hooks that timing modes attach to.

The runtimes call `annotator.op(...)` around every op (~500 per 7B decode token), so the cost
of a range matters:
- NVTX ranges are pushed only when a tool will record them: a tool attached to the process
  (Nsight Systems / Compute set NVTX_INJECTION64_PATH, or NVTX_INJECTION32_PATH, in the process
  they start) or QPROF_NVTX=1 (forces them, e.g. to measure the call cost; QPROF_NVTX=0 forbids
  them). With no tool and no listener, `op()` returns one shared no-op context manager and
  nvtx is never called: the clean path costs a method call.
- When they are pushed, it is through a cached nvtx Domain with one EventAttributes object per
  (message, category), built on first use, and a small __enter__/__exit__ class rather than a
  generator.
Listeners (timing modes) are called whether or not NVTX is on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

DOMAIN = "qprof"
LEVELS = ("run", "phase", "token", "layer", "op")
INJECTION_VARS = ("NVTX_INJECTION64_PATH", "NVTX_INJECTION32_PATH")
FORCE_VAR = "QPROF_NVTX"
_NULL = nullcontext()
_MISSING = object()


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


def tool_attached(env: Mapping[str, str] | None = None) -> bool:
    """Whether an NVTX tool (nsys, ncu) will receive ranges: it names its injection library in the environment."""
    env = os.environ if env is None else env
    return any(env.get(var) for var in INJECTION_VARS)


def nvtx_decision(enabled: bool, force: bool | None = None, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether to push NVTX ranges, and why: off when disabled, else QPROF_NVTX / `force`, else a tool attached."""
    env = os.environ if env is None else env
    if not enabled:
        return False, "NVTX off (--no-nvtx)"
    if force is None:
        value = env.get(FORCE_VAR, "").strip()
        force = {"1": True, "0": False}.get(value)
    if force is not None:
        return force, f"NVTX forced {'on' if force else 'off'} ({FORCE_VAR}={int(force)})"
    if tool_attached(env):
        return True, "an NVTX tool is attached"
    return False, "no NVTX tool attached: ranges skipped"


def _nvtx_domain(enabled_only: bool):
    """nvtx's Domain for DOMAIN (its DummyDomain when no tool records it, or None with enabled_only)."""
    try:
        import nvtx
    except ImportError:
        return None
    domain = nvtx.get_domain(DOMAIN)
    if enabled_only:
        dummy = getattr(getattr(nvtx, "_lib", None), "dummy_domain", None)
        if dummy is None or domain is dummy:
            return None
    return domain


class _Range:
    """One range: pushes NVTX (if on) and calls the listeners; __exit__ undoes both even on an exception."""

    __slots__ = ("_ann", "_attrs", "_info")

    def __init__(self, ann: Annotator, info: RangeInfo, attrs) -> None:
        self._ann, self._info, self._attrs = ann, info, attrs

    def __enter__(self) -> RangeInfo:
        ann = self._ann
        if ann._domain is not None:
            ann._domain.push_range(self._attrs)
        for lis in ann.listeners:
            lis.begin(self._info)
        return self._info

    def __exit__(self, *exc) -> bool:
        ann = self._ann
        for lis in reversed(ann.listeners):
            lis.end(self._info)
        if ann._domain is not None:
            ann._domain.pop_range()
        return False


class Annotator:
    def __init__(self, nvtx_enabled: bool = True, listeners: tuple[RangeListener, ...] = (),
                 force_nvtx: bool | None = None, env: Mapping[str, str] | None = None):
        self.listeners = list(listeners)
        self._attrs: dict[tuple[str, str], object] = {}
        self._ops: dict[tuple[str, str, str | None], _Range] = {}
        self._caches: dict[int, tuple[dict, dict]] = {}  # id(domain) -> (attrs, ops) built for that domain
        self.set_nvtx(nvtx_enabled, force_nvtx, env)

    def set_nvtx(self, enabled: bool, force: bool | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """(Re)decide whether ranges are pushed (see nvtx_decision); a runtime holding this annotator follows."""
        self._domain = None
        on, self.nvtx_reason = nvtx_decision(enabled, force, env)
        if on:
            domain = _nvtx_domain(enabled_only=False)
            if domain is None:  # nvtx is a declared dependency; without it ranges are simply absent
                self.nvtx_reason = "nvtx is not installed: no ranges"
            self._domain = domain
        elif enabled and force is None and FORCE_VAR not in (os.environ if env is None else env):
            # a tool that injected itself without the variable: NVTX itself reports the domain enabled
            self._domain = _nvtx_domain(enabled_only=True)
            if self._domain is not None:
                self.nvtx_reason = "an NVTX tool is attached (NVTX reports the domain enabled)"
        # ranges carry their domain's attributes: each domain keeps its own, so switching back costs nothing
        self._attrs, self._ops = self._caches.setdefault(id(self._domain), ({}, {}))

    def with_listeners(self, listeners) -> Annotator:
        """An annotator that pushes NVTX ranges exactly when this one does, heard only by `listeners`.

        A captured CUDA graph runs its step under one: the ranges still mark the ops, while this
        annotator's timing listeners would put their own kernels and events into the graph."""
        twin = Annotator(nvtx_enabled=False, listeners=tuple(listeners))
        twin._domain, twin.nvtx_reason = self._domain, self.nvtx_reason
        twin._attrs, twin._ops = self._attrs, {}  # NVTX attributes are per domain; _Range objects are per annotator
        twin._caches = {id(twin._domain): (twin._attrs, twin._ops)}
        return twin

    @property
    def nvtx_on(self) -> bool:
        """Whether NVTX ranges are pushed (a tool attached, or forced)."""
        return self._domain is not None

    @property
    def active(self) -> bool:
        return self._domain is not None or bool(self.listeners)

    def _range(self, info: RangeInfo) -> _Range:
        attrs = None
        if self._domain is not None:
            key = (info.message, info.category)
            attrs = self._attrs.get(key, _MISSING)
            if attrs is _MISSING:  # (nvtx's DummyDomain hands out None: cached all the same)
                attrs = self._attrs[key] = self._domain.get_event_attributes(message=info.message,
                                                                             category=info.category)
        return _Range(self, info, attrs)

    def run(self, name: str = "run"):
        return self._range(RangeInfo("run", name, "run")) if self.active else _NULL

    def phase(self, name: str):
        return self._range(RangeInfo("phase", name, "phase", {"phase": name})) if self.active else _NULL

    def token(self, index: int):
        return self._range(RangeInfo("token", f"token {index}", "token", {"token": index})) if self.active else _NULL

    def layer(self, index: int):
        return self._range(RangeInfo("layer", f"blk.{index}", "layer", {"layer": index})) if self.active else _NULL

    def op(self, name: str, family: str, qtype: str | None = None, **meta):
        if self._domain is None and not self.listeners:
            return _NULL
        if meta:
            return self._range(RangeInfo("op", name, op_category(family, qtype),
                                         {"family": family, "qtype": qtype, **meta}))
        key = (name, family, qtype)
        rng = self._ops.get(key)
        if rng is None:  # a _Range holds no state between enter and exit, so one per op serves every call
            rng = self._ops[key] = self._range(RangeInfo("op", name, op_category(family, qtype),
                                                         {"family": family, "qtype": qtype}))
        return rng


NULL_ANNOTATOR = Annotator(nvtx_enabled=False)
