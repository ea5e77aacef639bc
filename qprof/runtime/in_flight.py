"""Greedy decode with one token in flight: each step's token chosen on the device and the next step queued before
the host reads it (the runtime's own decode_greedy), or decode + greedy sample one after the other (any runtime).

A generation loop that synchronizes after every token (llama-bench's, and bench's `--decode-loop synced`) leaves
the device idle while the host returns from the wait, takes the token and queues the next step. When sampling
is greedy the next step's input can come from the argmax on the device, so the host only has to read each
token back one step late, to stream it and to check its stop rules (vLLM's async scheduling and
TensorRT-LLM's overlap scheduler do the same).
"""

from __future__ import annotations

from collections.abc import Iterator

from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams

GREEDY = SamplingParams()
WARM_STEPS = 2  # a warm-up's steps: the first (step_set, eager and captured) and a chained one (step_chain, a replay)


def decode_greedy(runtime, first_token: int, n: int) -> Iterator[int]:
    """`n` decode steps from `first_token` at position runtime.n_past, yielding each step's greedy token in order.

    Step i decodes the token step i-1 chose (step 0 decodes first_token), so the tokens are those of
    decode + sample(greedy) repeated. A runtime with its own `decode_greedy(first_token, n)` (CudaRuntime) keeps
    the next step queued while the host reads a token. There, when the consumer stops before the n-th token (an
    end-of-generation token), the step queued behind the last token it read has run too: that token is decoded,
    its KV entry written at the next position and counted in n_past (one more than the synced loop leaves), and
    its own choice is never read. The cache then holds every token yielded, the last one included, so a caller
    that went on from there would continue after that token, not decode it again. After all n tokens, n_past has
    grown by n on every runtime. n and the context are checked when this is called, not at the first token.
    """
    if has_in_flight_decode(runtime):
        return runtime.decode_greedy(first_token, n)
    return decode_greedy_synced(runtime, first_token, n)


def run_greedy(runtime, first_token: int, n: int) -> None:
    """decode_greedy's n steps with every token read back (the host's side of the loop) and none kept: a warm-up,
    or a benchmark that only times the loop."""
    for _ in decode_greedy(runtime, first_token, n):
        pass


def has_in_flight_decode(runtime) -> bool:
    """Whether decode_greedy keeps the next step queued while the host reads a token (the runtime's own loop)."""
    return callable(getattr(runtime, "decode_greedy", None))


def decode_greedy_synced(runtime, first_token: int, n: int) -> Iterator[int]:
    """The generic loop: decode, then sample greedily (the runtime waits for its token), n times."""
    check_steps(n, runtime.n_past, runtime.n_ctx)

    def steps() -> Iterator[int]:
        token = first_token
        for _ in range(n):
            token = runtime.sample(runtime.decode(token), GREEDY)
            yield token

    return steps()


def check_steps(n: int, n_past: int, n_ctx: int) -> None:
    """A one-line QprofError unless n decode steps (n >= 0) fit the KV cache after n_past tokens."""
    if n < 0:
        raise QprofError(f"decode steps must be 0 or more, got {n}")
    if n_past + n > n_ctx:
        raise QprofError(f"context full: {n_past} + {n} tokens exceed {n_ctx} (raise --ctx)")
