"""K-quant quantizers (Q2_K..Q6_K): llama.cpp's reference algorithms, vectorized over all blocks.

Each follows ggml-quants.c's quantize_row_q*_K_ref (no importance matrix): fit a scale (and
min) per sub-block with the same candidate-scale searches (make_qkx2_quants, make_q3_quants,
make_qx_quants), quantize those to 4/6/8-bit with one float16 super-scale, then re-round every
value against the stored scales. Python loops run only over the fixed candidate list or the 16
positions of a sub-block, never over blocks. All arithmetic is float32 and every sum runs in
C's order, so the result equals the C reference built without FMA contraction (the tests check
it block for block against a scalar port); an FMA-contracted build may break rare ties otherwise.
Where a sub-block's stored scale is 0 the codes there are 0 (ggml keeps its search's codes);
both decode to the same values.
"""

from __future__ import annotations

import numpy as np

from qprof.quant.quantize_legacy import F32, abs_max_signed, fp16_bytes

QK_K = 256
GROUP_MAX_EPS = F32(1e-15)
_RMSE_TRIES = 5  # coordinate-descent passes in make_q3_quants


def _abs_max_signed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the entry of largest magnitude (first on ties) and that magnitude."""
    v = abs_max_signed(x)
    return v, np.abs(v)


# The fits below work on position-major (n, S) arrays, S sub-blocks of n values: a sum over
# axis 0 then adds position after position in float32, the order of ggml's C loops, so that
# near-ties between candidate scales break exactly as they do in C.


def fit_scale_min(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray]:
    """make_qkx2_quants over rows of x: (scale, min) so x ~ scale*L - min with L in 0..nmax.

    Tries nstep+1 inverse scales (rmin + rdelta*k + nmax)/(max - min), refits scale and min by
    weighted least squares for each rounding, keeps the one of least weighted error (absolute
    when use_mad, squared otherwise). As in ggml, each try rounds against the best min found so
    far, so the search is sequential over k (and vectorized over rows). The min never exceeds 0.
    """
    xt = np.ascontiguousarray(x.T)
    wt = np.ascontiguousarray(w.T)
    lo = np.minimum(xt.min(axis=0), F32(0))
    hi = xt.max(axis=0)
    flat = hi == lo
    sum_w = wt.sum(axis=0)
    sum_x = (wt * xt).sum(axis=0)

    def codes(iscale: np.ndarray, mn: np.ndarray) -> np.ndarray:
        L = xt - mn
        L *= iscale
        np.rint(L, out=L)
        return np.clip(L, F32(0), F32(nmax), out=L)

    def error(scale: np.ndarray, mn: np.ndarray, L: np.ndarray) -> np.ndarray:
        diff = scale * L
        diff += mn
        diff -= xt
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= wt
        return diff.sum(axis=0)

    def inverse_scale(numerator: np.float32, mn: np.ndarray) -> np.ndarray:
        span = hi - mn
        span[span == 0] = 1  # flat rows: any finite value; their result is replaced below
        return numerator / span

    mn = lo
    iscale = inverse_scale(F32(nmax), mn)
    scale = F32(1) / iscale
    best = error(scale, mn, codes(iscale, mn))
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(nstep + 1):
            L = codes(inverse_scale(F32(rmin) + F32(rdelta) * F32(k) + F32(nmax), mn), mn)
            wl = wt * L
            sl = wl.sum(axis=0)
            sl2 = (wl * L).sum(axis=0)
            sxl = (wl * xt).sum(axis=0)
            det = sum_w * sl2 - sl * sl
            this_scale = (sum_w * sxl - sum_x * sl) / det
            this_min = (sl2 * sum_x - sl * sxl) / det
            clamp = this_min > 0
            this_scale = np.where(clamp, sxl / sl2, this_scale)
            this_min = np.where(clamp, F32(0), this_min)
            cur = error(this_scale, this_min, L)
            better = (det > 0) & (cur < best)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    return np.where(flat, F32(0), scale), -mn


def _seq_moments(wxt: np.ndarray, wt: np.ndarray, Lt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w*x*L, sum w*L*L) over the positions of position-major (n, S) arrays."""
    wl = wt * Lt
    wl *= Lt
    return (wxt * Lt).sum(axis=0), wl.sum(axis=0)


def _signed_setup(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Shared start of make_qx_quants / make_q3_quants: signed max, zero rows, position-major x, w, w*x."""
    mx, amax = _abs_max_signed(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    xt = np.ascontiguousarray(x.T)
    wt = xt * xt
    return mx, zero, xt, wt, wt * xt


def _signed_codes(xt: np.ndarray, iscale: np.ndarray, nmax: int) -> np.ndarray:
    L = xt * iscale
    np.rint(L, out=L)
    return np.clip(L, -nmax, nmax - 1, out=L)


def fit_signed_scale(x: np.ndarray, nmax: int) -> np.ndarray:
    """make_qx_quants(rmse_type=1): scale so x ~ scale*L, L in -nmax..nmax-1, weights x^2.

    Tries inverse scales -(nmax + 0.1*k)/max for k in -9..9 and keeps the one maximising
    (sum w x L)^2 / sum w L^2, i.e. least weighted squared error at the optimal scale.
    """
    mx, zero, xt, wt, wxt = _signed_setup(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        slx, sl2 = _seq_moments(wxt, wt, _signed_codes(xt, F32(-nmax) / mx, nmax))
        scale = np.where(sl2 != 0, slx / sl2, F32(0))
        best = scale * slx
        for k in range(-9, 10):
            if k == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(k)) / mx
            slx, sl2 = _seq_moments(wxt, wt, _signed_codes(xt, iscale, nmax))
            better = (sl2 > 0) & (slx * slx > best * sl2)
            scale = np.where(better, slx / sl2, scale)
            best = np.where(better, scale * slx, best)
    return np.where(zero, F32(0), scale).astype(F32)


def fit_q3_scale(x: np.ndarray, nmax: int) -> np.ndarray:
    """make_q3_quants(do_rmse): round at -nmax/max, then up to 5 passes of coordinate descent.

    Each pass visits the positions of a sub-block in order and moves one code to the value
    that is optimal given the others, if that raises (sum w x L)^2 / sum w L^2 (w = x^2).
    Sub-blocks are the vector axis; positions are the (16-step) Python loop.
    """
    mx, zero, xt, wt, wxt = _signed_setup(x)
    Lt = _signed_codes(xt, F32(-nmax) / mx, nmax)
    sumlx, suml2 = _seq_moments(wxt, wt, Lt)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_RMSE_TRIES):
            changed = False
            for i in range(len(xt)):
                li, wi, wxi = Lt[i], wt[i], wxt[i]
                slx = sumlx - wxi * li
                sl2 = suml2 - wi * li * li
                new_l = np.rint(xt[i] * sl2 / slx)
                np.clip(new_l, -nmax, nmax - 1, out=new_l)
                slx_new = slx + wxi * new_l
                sl2_new = sl2 + wi * new_l * new_l
                accept = (
                    (slx > 0) & (new_l != li) & (sl2_new > 0)
                    & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
                )
                if accept.any():
                    changed = True
                    np.copyto(li, new_l, where=accept)
                    sumlx = np.where(accept, slx_new, sumlx)
                    suml2 = np.where(accept, sl2_new, suml2)
            if not changed:  # no code moved: later passes would see the same state
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale).astype(F32)


def quantize_positive(v: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sub-block scales or mins (nb, n) >= 0 -> codes 0..nmax and their float16 super-scale (nb,)."""
    top = np.maximum(v.max(axis=1), F32(0))
    inv = np.divide(F32(nmax), top, out=np.zeros_like(top), where=top > 0)
    codes = np.clip(np.rint(inv[:, None] * v), 0, nmax).astype(np.uint8)
    return codes, (top / F32(nmax)).astype(np.float16)


def _requantize(x: np.ndarray, step: np.ndarray, offset: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """Final codes rint((x + offset)/step) clipped to lo..hi (int16), and 0 where step is 0.

    x is (nb, n_sub, n); step and offset are (nb, n_sub), as the decoder will see them. Where
    the step is 0 the codes do not change the decoded value; ggml leaves its search's codes there.
    """
    ok = step != 0
    num = x if offset is None else x + offset[:, :, None]
    L = np.rint(num / np.where(ok, step, F32(1))[:, :, None])
    np.clip(L, lo, hi, out=L)
    L[~ok] = 0
    return L.astype(np.int16)


def _signed_super_scale(
    scales: np.ndarray, levels: int, eps: np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q3_K/Q6_K: iscale = -levels/max (signed max by magnitude), d = 1/iscale; codes rint(iscale*s).

    Blocks whose largest |scale| is below eps get d = 0. Returns (iscale, float16 d, has_scale).
    """
    mx, amax = _abs_max_signed(scales)
    has = amax >= eps if eps > 0 else amax > 0
    iscale = np.divide(F32(-levels), mx, out=np.zeros_like(mx), where=has)
    d = np.divide(F32(1), iscale, out=np.zeros_like(mx), where=has)
    return iscale, d.astype(np.float16), has


def pack_crumbs(L: np.ndarray) -> np.ndarray:
    """(nb, 256) 2-bit codes -> 64 bytes: byte 32h+l holds value 128h+32k+l at bits 2k."""
    c = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(-1, 64)


def pack_bit_planes(bits: np.ndarray) -> np.ndarray:
    """(nb, 8, 32) single bits -> 32 bytes: byte l holds bits[:, k, l] at bit k."""
    return (bits.astype(np.uint8) << np.arange(8, dtype=np.uint8)[:, None]).sum(axis=1, dtype=np.uint8)


def pack_k4_nibbles(L: np.ndarray) -> np.ndarray:
    """(nb, 256) 4-bit codes -> 128 bytes: chunk c of 64 values packs sub-block 2c low, 2c+1 high."""
    c = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)


def pack_k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (nb, 8) -> 12 bytes (inverse of get_scale_min_k4)."""
    return np.concatenate(
        [
            ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
            lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
            (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4),
        ],
        axis=1,
    ).astype(np.uint8)


def pack_q3_scales(l6: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit codes (nb, 16) -> 12 bytes: low nibbles of j and j+8 in byte j, top crumbs after."""
    low = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    top = (l6 >> 4).reshape(-1, 4, 4)  # [k, b] = code 4k+b -> byte 8+b at bits 2k
    high = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)
    return np.concatenate([low, high], axis=1).astype(np.uint8)


def _min_scale_subblocks(xb: np.ndarray, sub: int, nmax: int, weights: np.ndarray, search: tuple) -> tuple:
    """Shared Q2_K/Q4_K/Q5_K part: fit per sub-block, quantize scales/mins, requantize values."""
    nb = len(xb)
    xs = xb.reshape(-1, sub)
    scale, mins = fit_scale_min(xs, weights, nmax, *search)
    n_sub = QK_K // sub
    scale_bits = 4 if sub == 16 else 6
    ls, d = quantize_positive(scale.reshape(nb, n_sub), (1 << scale_bits) - 1)
    lm, dmin = quantize_positive(mins.reshape(nb, n_sub), (1 << scale_bits) - 1)
    step = d.astype(F32)[:, None] * ls.astype(F32)
    offset = dmin.astype(F32)[:, None] * lm.astype(F32)
    L = _requantize(xb.reshape(nb, n_sub, sub), step, offset, 0, nmax).reshape(nb, QK_K)
    return L, ls, lm, d, dmin


def quantize_q2_k(xb: np.ndarray) -> np.ndarray:
    xs = xb.reshape(-1, 16)
    L, ls, lm, d, dmin = _min_scale_subblocks(xb, 16, 3, np.abs(xs), (-0.5, 0.1, 15, True))
    return np.concatenate(
        [ls | (lm << 4), pack_crumbs(L), fp16_bytes(d), fp16_bytes(dmin)], axis=1
    )


def _q4_k_weights(xb: np.ndarray) -> np.ndarray:
    xs = xb.reshape(-1, 32)
    sq = xs * xs
    av = np.sqrt(np.ascontiguousarray(sq.T).sum(axis=0) / F32(32))  # summed in C's order
    return av[:, None] + np.abs(xs)


def quantize_q4_k(xb: np.ndarray) -> np.ndarray:
    L, ls, lm, d, dmin = _min_scale_subblocks(xb, 32, 15, _q4_k_weights(xb), (-1.0, 0.1, 20, False))
    return np.concatenate(
        [fp16_bytes(d), fp16_bytes(dmin), pack_k4_scales(ls, lm), pack_k4_nibbles(L)], axis=1
    )


def quantize_q5_k(xb: np.ndarray) -> np.ndarray:
    L, ls, lm, d, dmin = _min_scale_subblocks(xb, 32, 31, _q4_k_weights(xb), (-0.5, 0.1, 15, False))
    high = pack_bit_planes((L >> 4).reshape(-1, 8, 32))
    return np.concatenate(
        [fp16_bytes(d), fp16_bytes(dmin), pack_k4_scales(ls, lm), high, pack_k4_nibbles(L & 0xF)], axis=1
    )


def quantize_q3_k(xb: np.ndarray) -> np.ndarray:
    nb = len(xb)
    scales = fit_q3_scale(xb.reshape(-1, 16), 4).reshape(nb, 16)
    iscale, d, has = _signed_super_scale(scales, 32, F32(0))  # ggml: `if (max_scale)`
    l6 = np.clip(np.rint(iscale[:, None] * scales), -32, 31).astype(np.int16) + 32
    l6[~has] = 0  # ggml leaves the scale bytes zeroed when the block is all zero
    step = d.astype(F32)[:, None] * (l6 - 32).astype(F32)
    L = (_requantize(xb.reshape(nb, 16, 16), step, None, -4, 3) + 4).reshape(nb, QK_K)
    hmask = pack_bit_planes((L >> 2).reshape(-1, 8, 32))  # bit k of byte m <- value 32k+m >= 4
    return np.concatenate([hmask, pack_crumbs(L & 3), pack_q3_scales(l6), fp16_bytes(d)], axis=1)


def quantize_q6_k(xb: np.ndarray) -> np.ndarray:
    nb = len(xb)
    scales = fit_signed_scale(xb.reshape(-1, 16), 32).reshape(nb, 16)
    iscale, d, _ = _signed_super_scale(scales, 128, GROUP_MAX_EPS)
    sc = np.clip(np.rint(iscale[:, None] * scales), -128, 127).astype(np.int8)
    step = d.astype(F32)[:, None] * sc.astype(F32)
    L = (_requantize(xb.reshape(nb, 16, 16), step, None, -32, 31) + 32).astype(np.uint8)
    c = L.reshape(-1, 2, 4, 32)  # [half, k, l] = value 128h + 32k + l
    ql = ((c[:, :, 0:2] & 0xF) | ((c[:, :, 2:4] & 0xF) << 4)).reshape(-1, 128)
    top = c >> 4
    qh = (top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), fp16_bytes(d)], axis=1)


KQUANT_QUANTIZERS = {
    "Q2_K": quantize_q2_k,
    "Q3_K": quantize_q3_k,
    "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k,
    "Q6_K": quantize_q6_k,
}
