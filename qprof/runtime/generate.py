"""The generation loop shared by every runtime: prompt -> prefill -> sample/decode until EOS or the limit."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from qprof.errors import QprofError
from qprof.runtime.base import SamplingParams


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
        """decode() calls made: every sampled token but the first came from one."""
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
             sampling: SamplingParams | None = None, chat: bool = True, stop_at_eos: bool = True) -> GenerationResult:
    """Generate from `prompt` (text, or ids used as given) with any Runtime.

    Generation stops at an end-of-generation token (when stop_at_eos), after max_new_tokens, or
    when the KV cache is full (a stated stop, not an error). Timers read the host clock only
    after runtime.synchronize(), so they measure finished device work.
    """
    sampling = sampling or SamplingParams()
    if max_new_tokens < 1:
        raise QprofError(f"--n-predict must be at least 1, got {max_new_tokens}")
    ids = list(prompt) if isinstance(prompt, list) else tokenizer.encode_prompt(prompt, chat=chat)
    runtime.reset()
    runtime.synchronize()

    t0 = time.perf_counter()
    token = runtime.sample(runtime.prefill(ids), sampling)
    runtime.synchronize()
    t1 = time.perf_counter()

    new_ids = [token]
    stop = "length"
    while True:
        if stop_at_eos and tokenizer.is_eog(token):
            stop = "eos"
            break
        if len(new_ids) >= max_new_tokens:
            stop = "length"
            break
        if runtime.n_past >= runtime.n_ctx:
            stop = "context"
            break
        token = runtime.sample(runtime.decode(token), sampling)
        new_ids.append(token)
    runtime.synchronize()
    t2 = time.perf_counter()

    shown = new_ids[:-1] if stop == "eos" else new_ids
    return GenerationResult(
        text=tokenizer.decode(shown),
        prompt_ids=ids,
        new_ids=new_ids,
        prompt_seconds=t1 - t0,
        decode_seconds=t2 - t1,
        stop_reason=stop,
    )
