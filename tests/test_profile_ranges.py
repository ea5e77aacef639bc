"""NVTX ranges: pushed only when a tool is attached (or QPROF_NVTX=1), through cached attributes;
never called otherwise; the nsys child always gets them. A fake nvtx module records every call."""

from __future__ import annotations

import sys
import types

import pytest

from qprof import annotate as ranges
from qprof.annotate import Annotator, nvtx_decision, tool_attached

TOOL = {"NVTX_INJECTION64_PATH": "/opt/nsys/libToolsInjection64.so"}


class FakeDomain:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def get_event_attributes(self, message=None, color=None, category=None, payload=None):
        self.calls.append(("attrs", message, category))
        return ("attrs", message, category)

    def push_range(self, attributes=None):
        self.calls.append(("push", attributes))

    def pop_range(self):
        self.calls.append(("pop",))


@pytest.fixture()
def fake_nvtx(monkeypatch):
    calls: list = []
    mod = types.ModuleType("nvtx")

    def get_domain(name=None):
        calls.append(("get_domain", name))
        return FakeDomain(calls)

    mod.get_domain = get_domain
    monkeypatch.setitem(sys.modules, "nvtx", mod)
    return calls


class Recorder:
    def __init__(self) -> None:
        self.seen: list = []

    def begin(self, info) -> None:
        self.seen.append(("begin", info.message))

    def end(self, info) -> None:
        self.seen.append(("end", info.message))


def test_decision():
    assert nvtx_decision(True, env={}) == (False, "no NVTX tool attached: ranges skipped")
    assert nvtx_decision(True, env=TOOL)[0] and tool_attached(TOOL)
    assert nvtx_decision(True, env={"NVTX_INJECTION32_PATH": "/x.so"})[0]
    assert not tool_attached({"NVTX_INJECTION64_PATH": ""})
    assert nvtx_decision(True, env={"QPROF_NVTX": "1"}) == (True, "NVTX forced on (QPROF_NVTX=1)")
    assert nvtx_decision(True, env={**TOOL, "QPROF_NVTX": "0"}) == (False, "NVTX forced off (QPROF_NVTX=0)")
    assert nvtx_decision(True, force=True, env={"QPROF_NVTX": "0"})[0]
    assert nvtx_decision(False, force=True, env=TOOL) == (False, "NVTX off (--no-nvtx)")


def test_no_tool_means_nvtx_is_never_called(fake_nvtx):
    ann = Annotator(env={})
    assert not ann.nvtx_on and not ann.active
    assert ann.op("blk.0.attn_q", "matvec", "Q4_K") is ann.run() is ranges._NULL
    with ann.run(), ann.phase("decode"), ann.op("blk.0.attn_q", "matvec", "Q4_K"):
        pass
    assert [c for c in fake_nvtx if c[0] != "get_domain"] == []  # the fake has no DummyDomain: no tool found


def test_no_tool_with_a_listener_calls_the_listener_only(fake_nvtx):
    rec = Recorder()
    ann = Annotator(listeners=(rec,), env={})
    with ann.phase("decode"), ann.op("blk.0.attn_q", "matvec", "Q4_K"):
        pass
    assert rec.seen == [("begin", "decode"), ("begin", "blk.0.attn_q"), ("end", "blk.0.attn_q"), ("end", "decode")]
    assert not any(c[0] in ("push", "pop", "attrs") for c in fake_nvtx)


def test_tool_attached_pushes_with_cached_attributes(fake_nvtx):
    rec = Recorder()
    ann = Annotator(listeners=(rec,), env=TOOL)
    assert ann.nvtx_on and ann.nvtx_reason == "an NVTX tool is attached"
    for _ in range(3):
        with ann.op("blk.0.attn_q", "matvec", "Q4_K") as info:
            assert info.category == "matvec/Q4_K"
    assert fake_nvtx.count(("get_domain", "qprof")) == 1
    assert fake_nvtx.count(("attrs", "blk.0.attn_q", "matvec/Q4_K")) == 1  # built once, reused
    pushes = [c for c in fake_nvtx if c[0] == "push"]
    assert pushes == [("push", ("attrs", "blk.0.attn_q", "matvec/Q4_K"))] * 3
    assert fake_nvtx.count(("pop",)) == 3 and len(rec.seen) == 6
    assert ann.op("blk.0.attn_q", "matvec", "Q4_K") is ann.op("blk.0.attn_q", "matvec", "Q4_K")  # built once
    with ann.op("blk.0.attn_q", "matvec", "Q4_K", bytes=7) as info:
        assert info.meta == {"family": "matvec", "qtype": "Q4_K", "bytes": 7}


def test_a_range_is_closed_when_the_op_raises(fake_nvtx):
    rec = Recorder()
    ann = Annotator(listeners=(rec,), env=TOOL)
    with pytest.raises(ValueError), ann.op("blk.0.rope", "rope"):
        raise ValueError("boom")
    assert fake_nvtx[-1] == ("pop",) and rec.seen[-1] == ("end", "blk.0.rope")


def test_forced_on_without_a_tool(fake_nvtx):
    ann = Annotator(env={"QPROF_NVTX": "1"})
    assert ann.nvtx_on and ann.active
    with ann.token(4):
        pass
    assert ("push", ("attrs", "token 4", "token")) in fake_nvtx
    assert not Annotator(env={"QPROF_NVTX": "1"}, nvtx_enabled=False).nvtx_on
    assert Annotator(env={}, force_nvtx=True).nvtx_on


def test_nsys_child_gets_ranges(monkeypatch, tmp_path):
    """The nsys child runs with NVTX on in its spec and an environment that cannot turn ranges off."""
    import json

    import pandas as pd

    from qprof.analysis import nsys_sqlite
    from qprof.profile import modes, nsys
    from qprof.profile import spec as specs

    monkeypatch.setenv("QPROF_NVTX", "0")  # a stray setting in the user's shell
    monkeypatch.setenv("NVTX_INJECTION64_PATH", "/opt/nsys/libToolsInjection64.so")
    seen = {}

    def fake_capture(argv, out_dir, name="qprof", env=None, **_):
        seen["env"], seen["argv"] = env, argv
        spec = json.loads((out_dir / "spec.json").read_text())
        seen["nvtx"] = spec["options"]["nvtx"]
        (out_dir / "result.json").write_text(json.dumps({"result": {
            "model_name": "m", "device_name": "d", "label": "clean", "n_prompt": 1, "n_gen": 1, "prefill_ns": 1,
            "decode_ns": 1, "weight_bytes": 1, "n_layer": 1}}))
        return nsys.NsysCapture(out_dir / "r.nsys-rep", out_dir / "r.sqlite", out_dir / "r.log")

    monkeypatch.setattr(nsys, "capture", fake_capture)
    monkeypatch.setattr(nsys_sqlite, "read_nsys_sqlite", lambda path: pd.DataFrame())
    notes: list[str] = []
    spec = specs.WorkloadSpec("tiny-q4_k_m", "cpu", 1, 1, specs.options_from_flags(nvtx=False))
    modes._nsys(spec, tmp_path, {}, notes)
    assert seen["nvtx"] is True and "profiled with NVTX on" in notes[0]
    env = seen["env"]
    assert env["NVTX_INJECTION64_PATH"] == "/opt/nsys/libToolsInjection64.so"  # passed through, not cleared
    assert nvtx_decision(True, env=env)[0]
    assert nvtx_decision(True, env={k: v for k, v in env.items() if not k.startswith("NVTX_")})[0]
