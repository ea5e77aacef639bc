"""The one timed prefill/decode loop: the calls it makes, in order, for profile, generate and bench."""

from __future__ import annotations

import pytest

from qprof.errors import QprofError
from qprof.runtime.timed import timed_loop


class Recorder:
    """A runtime that logs every call; decode returns its token as the 'logits'."""

    n_ctx = 100

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.n_past = 0

    def reset(self) -> None:
        self.calls.append("reset")

    def synchronize(self) -> None:
        self.calls.append("sync")

    def prefill(self, tokens):
        if not tokens:
            raise QprofError("empty prompt: nothing to run")
        self.calls.append(f"prefill {len(tokens)}")
        return "p"

    def decode(self, token):
        self.calls.append(f"decode {token}")
        return token


def test_profile_and_generate_shape():
    rt, chosen = Recorder(), []

    def pick(logits):
        chosen.append(logits)
        return None if len(chosen) > 2 else len(chosen)

    times = timed_loop(rt, [5, 6, 7], pick)
    assert rt.calls == ["reset", "sync", "prefill 3", "sync", "decode 1", "decode 2", "sync"]
    assert chosen == ["p", 1, 2]  # every forward's logits are chosen from, the last one's too
    assert times.prefill_ns >= 0 and times.decode_ns >= 0


def test_bench_shape_syncs_every_step_and_may_skip_prefill():
    rt = Recorder()
    gen = iter([3, 4])
    timed_loop(rt, None, lambda logits: next(gen, None), sync_after_prefill=False, sync_every_step=True)
    assert rt.calls == ["reset", "sync", "decode 3", "sync", "decode 4", "sync", "sync"]
    rt = Recorder()
    timed_loop(rt, [1], lambda logits: None, sync_after_prefill=False, sync_every_step=True)
    assert rt.calls == ["reset", "sync", "prefill 1", "sync"]  # pp only: no decode


def test_an_empty_prompt_still_reaches_the_runtimes_check():
    with pytest.raises(QprofError, match="empty prompt"):
        timed_loop(Recorder(), [], lambda logits: None)
