"""The bounds a bench row is read against: the decode floor (bandwidth / weight bytes per token) and the
prefill roofline (GEMM rate / FLOPs per prompt token), with the figures and their sources."""

from __future__ import annotations

from qprof.ceilings.choose import RunCeilings


def attention_keys(n_prompt: int, window: int | None) -> int:
    """Keys every query of a causal prompt attends to, summed over the prompt (a sliding window caps each)."""
    if window is None or window >= n_prompt:
        return n_prompt * (n_prompt + 1) // 2
    return window * (window + 1) // 2 + (n_prompt - window) * window


def prefill_flops(model, n_prompt: int) -> int:
    """FLOPs of one prefill of n_prompt tokens: every weight matrix once per token (2 FLOPs per weight),
    the output projection for the last token only, and attention's QK^T and PV over the causal prefix."""
    cfg = model.config
    flops = 0
    for name, t in model.tensors.items():
        if len(t.shape) != 2 or name == "token_embd.weight":
            continue
        flops += 2 * t.n_elements * (1 if name == "output.weight" else n_prompt)
    if cfg.tied_embeddings and "output.weight" not in model.tensors and "token_embd.weight" in model.tensors:
        flops += 2 * model.tensors["token_embd.weight"].n_elements
    flops += 2 * 2 * cfg.n_layer * cfg.n_head * cfg.head_dim * attention_keys(n_prompt, cfg.sliding_window)
    return flops


def bound_fields(kind: str, bytes_per_token: int | None, flops_per_token: float | None,
                 ceilings: RunCeilings, avg_ts: float) -> dict:
    """Decode (tg) rows against the floor, prompt (pp) rows against the roofline; every row names both figures."""
    bw, gemm = ceilings.bandwidth, ceilings.gemm
    out = {"bytes_per_token": bytes_per_token, "bandwidth_GBps": bw.value, "bandwidth_source": bw.source,
           "floor_ts": None, "pct_of_floor": None, "flops_per_token": flops_per_token,
           "gemm_TFLOPS": gemm.value, "gemm_source": gemm.source, "roofline_ts": None, "pct_of_roofline": None}
    if kind == "tg" and bw.value and bytes_per_token:
        out["floor_ts"] = bw.value * 1e9 / bytes_per_token
        out["pct_of_floor"] = 100.0 * avg_ts / out["floor_ts"]
    if kind == "pp" and gemm.value and flops_per_token:
        out["roofline_ts"] = gemm.value * 1e12 / flops_per_token
        out["pct_of_roofline"] = 100.0 * avg_ts / out["roofline_ts"]
    return out
