"""CudaRuntime's greedy decode with one token in flight: each step's argmax feeds the next step on the device, and
the host reads every token one step late from a ring of pinned slots, each with the CUDA event of its copy.

Per step i, queued on torch's current stream without a wait: the step input (step_set from the host's first
token at i = 0, else step_chain from the device token argmax wrote for step i-1), the step (graph replay, or
eager and captured, exactly as CudaRuntime.decode), argmax into buf.token_out, its copy into slot i % SLOTS and
that slot's event. Only then does the host wait for step i-1's event and yield its token, so the device always
has step i queued while the host streams step i-1's token and checks its stop rules. Stream order keeps the
single device token safe: step i's copy and step i+1's step_chain read it before step i+1's argmax rewrites it.
The ranges are decode's and sample's own (phase, token, step_input, decode_graph or the step's ops; sample,
token_readback, token_wait), so a profiler sees the same ops; token_wait is where the host waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch

from qprof.runtime.cuda import ops
from qprof.runtime.cuda.driver import _driver, check
from qprof.runtime.in_flight import check_steps

TOKEN_SLOTS = 2  # the slot the host reads and the one the next copy lands in; the host never waits on a third


class DeviceEvent:
    """A CUDA event without timing, recorded on torch's current stream; every driver call checked."""

    def __init__(self) -> None:
        drv = self._drv = _driver()
        flags = int(drv.CUevent_flags.CU_EVENT_DISABLE_TIMING)
        self.handle = check(drv.cuEventCreate(flags), "cuEventCreate(token slot)")

    def record(self) -> None:
        stream = self._drv.CUstream(torch.cuda.current_stream().cuda_stream)
        check(self._drv.cuEventRecord(self.handle, stream), "cuEventRecord(token slot)")

    def synchronize(self) -> None:
        check(self._drv.cuEventSynchronize(self.handle), "cuEventSynchronize(token slot; an earlier kernel may "
                                                         "have faulted)")

    def __del__(self) -> None:
        # the driver answers with a code, not an exception; at interpreter exit its module may be torn down first
        with contextlib.suppress(Exception):
            self._drv.cuEventDestroy(self.handle)


class TokenRing:
    """Page-locked int32 slots the tokens are copied back to, and the event that says each copy has landed."""

    def __init__(self, slots: int = TOKEN_SLOTS) -> None:
        self.host = torch.zeros(slots, dtype=torch.int32).pin_memory()
        self.events = [DeviceEvent() for _ in range(slots)]

    def __len__(self) -> int:
        return len(self.events)

    def queue_copy(self, slot: int, token: torch.Tensor) -> None:
        self.host[slot:slot + 1].copy_(token, non_blocking=True)
        self.events[slot].record()

    def wait(self, slot: int) -> int:
        self.events[slot].synchronize()
        return int(self.host[slot])


def greedy_chain(rt, ring: TokenRing, first_token: int, n: int) -> Iterator[int]:
    """n greedy steps of CudaRuntime `rt` from first_token at rt.n_past, each token yielded one step late (see the
    module). Checked now, not at the first token: n, the context, the token id."""
    check_steps(n, rt.n_past, rt.n_ctx)
    if n:
        (first_token,) = rt._check_tokens([first_token])
    return _chain(rt, ring, first_token, n)


def _chain(rt, ring: TokenRing, first_token: int, n: int) -> Iterator[int]:
    b, ann = rt.buf, rt.annotator
    logits = b.logits[0]
    pending: int | None = None  # the slot of the token queued last and not yet read
    for i in range(n):
        if i == 0:
            rt._queue_step(partial(ops.step_set, b.step, first_token))
        else:  # the token argmax chose for step i-1, still on the device
            rt._queue_step(partial(ops.step_chain, b.step, b.token_out))
        slot = i % len(ring)
        with ann.op("sample", "sample"):
            ops.argmax(logits, b.token_out)
        with ann.op("token_readback", "copy"):
            ring.queue_copy(slot, b.token_out)
        if pending is not None:
            yield _read(ann, ring, pending)  # outside every range: the consumer may stop here for good
        pending = slot
    if pending is not None:
        yield _read(ann, ring, pending)


def _read(ann, ring: TokenRing, slot: int) -> int:
    with ann.op("token_wait", "sync", syncs=True):
        return ring.wait(slot)
