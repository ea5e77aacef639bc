"""The one timed prefill/decode loop that profile, generate and bench run: clocks read only after a device sync."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoopTimes:
    prefill_ns: int  # from the clock's start to the first token chosen (and, with sync_after_prefill, synchronized)
    decode_ns: int  # every decode step and its token's choice, up to the final synchronize


def timed_loop(runtime, prompt: Sequence[int] | None, next_token: Callable[[object], int | None], *,
               sync_after_prefill: bool = True, sync_every_step: bool = False,
               prefill: Callable[[Sequence[int]], object] | None = None,
               decode_loop: Callable[[int], None] | None = None) -> LoopTimes:
    """Empty the cache, prefill `prompt` (None: no prefill), then decode while `next_token` gives a token.

    `next_token(logits)` sees the logits of the last forward (None when there was no prefill) and
    returns the next token to decode, or None to stop; sampling inside it is timed with the step
    it follows. The clock starts after a synchronize and every reading follows one. `prefill(prompt)`,
    when given, replaces runtime.prefill (generate's chunked prefill with progress) and is timed the same.
    `decode_loop(token)`, when given, runs the whole decode from the first token next_token gave (greedy
    tokens chained on the device, qprof.runtime.in_flight); next_token then only picks that first token.
    """
    prefill = prefill or runtime.prefill
    runtime.reset()
    runtime.synchronize()
    t0 = time.perf_counter_ns()
    token = next_token(prefill(prompt) if prompt is not None else None)
    if sync_after_prefill:
        runtime.synchronize()
    t1 = time.perf_counter_ns()
    if decode_loop is not None and token is not None:
        decode_loop(token)
        token = None
    while token is not None:
        token = next_token(runtime.decode(token))
        if sync_every_step:
            runtime.synchronize()
    runtime.synchronize()  # also after an in-flight loop: one that stopped early left its next step queued
    t2 = time.perf_counter_ns()
    return LoopTimes(t1 - t0, t2 - t1)
