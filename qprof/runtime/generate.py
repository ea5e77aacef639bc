"""The generation loop shared by every runtime: prompt -> prefill -> sample/decode until EOS or the limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams
from qprof.runtime.in_flight import decode_greedy, has_in_flight_decode
from qprof.runtime.timed import timed_loop


@dataclass
class GenerationResult:
    text: str
    prompt_ids: list[int] = field(repr=False)
    new_ids: list[int] = field(repr=False)  # every sampled id, the end-of-generation one included
    prompt_seconds: float  # prefill + first sample, device synchronized
    decode_seconds: float  # every decode step + its sample, device synchronized
    stop_reason: str  # "eos", "length" or "context"

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_decode(self) -> int:
        """Decode steps whose token was read: every sampled token but the first came from one."""
        return max(len(self.new_ids) - 1, 0)

    @property
    def prompt_tok_s(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.n_decode / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def stats_line(self) -> str:
        return (f"prompt: {self.n_prompt} tok, {self.prompt_tok_s:.1f} tok/s | "
                f"decode: {self.n_decode} tok, {self.decode_tok_s:.1f} tok/s")

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(n_prompt=self.n_prompt, n_decode=self.n_decode, prompt_tok_s=self.prompt_tok_s,
                 decode_tok_s=self.decode_tok_s)
        return d


def generate(runtime, tokenizer, prompt: str | list[int], max_new_tokens: int = 64,
             sampling: SamplingParams | None = None, chat: bool = True, stop_at_eos: bool = True,
             on_token: Callable[[int], None] | None = None, prefill_chunk: int | None = None,
             on_prefill: Callable[[int, int], None] | None = None) -> GenerationResult:
    """Generate from `prompt` (text, or ids used as given) with any Runtime.

    Generation stops at an end-of-generation token (when stop_at_eos), after max_new_tokens, or
    when the KV cache is full (a stated stop, not an error). Timers read the host clock only
    after runtime.synchronize(), so they measure finished device work.

    Greedy sampling decodes through qprof.runtime.in_flight.decode_greedy: the same tokens and stop rules, and
    on a runtime that chains steps on the device (CUDA) the next step is already queued while the host reads,
    streams and checks each token. There, at an end-of-generation token the step queued behind it has run too
    (runtime.n_past ends one higher than a synced loop leaves it, and that step's time is in decode_seconds);
    new_ids, stop_reason and text do not change. Other sampling decodes a step, then samples its token.

    on_token(id) is called with every token that will be shown (not the end-of-generation one) as soon
    as it is sampled, for streaming. Its own time is left out of prompt_seconds, and out of decode_seconds
    where it holds up the device (a synced loop); where the next step is in flight meanwhile, the device does
    not wait for it, so its time stays in. With prefill_chunk the prompt is prefilled that many tokens at a
    time, on_prefill(done, total) after each chunk (progress).
    """
    sampling = sampling or SamplingParams()
    if max_new_tokens < 1:
        raise QprofError(f"--n-predict must be at least 1, got {max_new_tokens}")
    ids = list(prompt) if isinstance(prompt, list) else tokenizer.encode_prompt(prompt, chat=chat)
    new_ids: list[int] = []
    stop = "length"
    outside = [0.0, 0.0]  # seconds spent in on_token during prefill, during decode: left out of both rates
    overlapped = sampling.greedy and has_in_flight_decode(runtime)

    def keep(token: int) -> bool:
        """Record a sampled token and stream it; False once generation stops (end of generation, the limit, a full
        cache). The cache holds the prompt and every kept token but the last, whatever the loop queued ahead."""
        nonlocal stop
        new_ids.append(token)
        if stop_at_eos and tokenizer.is_eog(token):
            stop = "eos"
            return False
        if on_token is not None:
            t = time.perf_counter()
            on_token(token)
            if not (overlapped and len(new_ids) > 1):
                outside[len(new_ids) > 1] += time.perf_counter() - t
        if len(new_ids) >= max_new_tokens:
            stop = "length"
        elif len(ids) + len(new_ids) - 1 >= runtime.n_ctx:
            stop = "context"
        else:
            return True
        return False

    def next_token(logits) -> int | None:
        token = runtime.sample(logits, sampling)
        return token if keep(token) else None

    def decode_in_flight(first: int) -> None:
        """Greedy tokens from `first` until keep() stops them; no step past the limit or the cache is queued."""
        steps = min(max_new_tokens - len(new_ids), runtime.n_ctx - (len(ids) + len(new_ids) - 1))
        for token in decode_greedy(runtime, first, steps):
            if not keep(token):
                break

    times = timed_loop(runtime, ids, next_token,
                       prefill=lambda prompt: _prefill(runtime, prompt, prefill_chunk, on_prefill),
                       decode_loop=decode_in_flight if sampling.greedy else None)
    shown = new_ids[:-1] if stop == "eos" else new_ids
    return GenerationResult(
        text=tokenizer.decode(shown),
        prompt_ids=ids,
        new_ids=new_ids,
        prompt_seconds=times.prefill_ns * 1e-9 - outside[0],
        decode_seconds=times.decode_ns * 1e-9 - outside[1],
        stop_reason=stop,
    )


def _prefill(runtime, ids: list[int], chunk: int | None, on_prefill: Callable[[int, int], None] | None):
    """Logits of the prompt's last token: one prefill call, or `chunk`-token calls with progress after each."""
    if not chunk or len(ids) <= chunk:
        return runtime.prefill(ids)
    for start in range(0, len(ids), chunk):
        logits = runtime.prefill(ids[start:start + chunk])
        if on_prefill is not None:
            runtime.synchronize()  # progress that counts finished work
            on_prefill(min(start + chunk, len(ids)), len(ids))
    return logits
