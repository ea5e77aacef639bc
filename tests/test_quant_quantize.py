"""Quantizers: legacy bytes equal gguf-py's; K-quants follow ggml's reference algorithm block for block.

gguf-py cannot quantize K-quants, so this file carries a literal, scalar, one-block-at-a-time
port of ggml-quants.c's quantize_row_q{2..6}_K_ref (float32 scalars, sums in C's order). The
vectorized quantizers must decode to exactly the values that port decodes to.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from qprof.errors import QprofError, UnsupportedError
from qprof.quant.dequant import dequantize
from qprof.quant.error_table import error_table, gaussian, main, round_trip_error
from qprof.quant.quantize import quantize
from qprof.quant.traits import ALL_TYPES, traits

f = np.float32
LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
KQUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


# ---------------------------------------------------------------- scalar port of ggml's reference


def _nearest(v) -> int:
    return int(np.rint(f(v)))


def _ref_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants: returns (scale, -min)."""
    mn = mx = x[0]
    sum_w = w[0]
    sum_x = f(w[0] * x[0])
    for i in range(1, len(x)):
        mn, mx = min(mn, x[i]), max(mx, x[i])
        sum_w = f(sum_w + w[i])
        sum_x = f(sum_x + f(w[i] * x[i]))
    mn = min(mn, f(0))
    if mx == mn:
        return f(0), f(-mn)

    def codes(iscale, m):
        return [max(0, min(nmax, _nearest(f(iscale * f(v - m))))) for v in x]

    def err(scale, m, L):
        e = f(0)
        for v, wi, li in zip(x, w, L):
            d = f(f(f(scale * f(li)) + m) - v)
            e = f(e + f(wi * (abs(d) if use_mad else f(d * d))))
        return e

    iscale = f(f(nmax) / f(mx - mn))
    scale = f(f(1) / iscale)
    best = err(scale, mn, codes(iscale, mn))
    for k in range(nstep + 1):
        L = codes(f(f(f(f(rmin) + f(f(rdelta) * f(k))) + f(nmax)) / f(mx - mn)), mn)
        sl = sl2 = sxl = f(0)
        for v, wi, li in zip(x, w, L):
            sl = f(sl + f(wi * f(li)))
            sl2 = f(sl2 + f(f(wi * f(li)) * f(li)))
            sxl = f(sxl + f(f(wi * f(li)) * v))
        det = f(f(sum_w * sl2) - f(sl * sl))
        if det > 0:
            s = f(f(f(sum_w * sxl) - f(sum_x * sl)) / det)
            m = f(f(f(sl2 * sum_x) - f(sl * sxl)) / det)
            if m > 0:
                s, m = f(sxl / sl2), f(0)
            cur = err(s, m, L)
            if cur < best:
                best, scale, mn = cur, s, m
    return scale, f(-mn)


def _signed_max(x):
    amax, mx = f(0), f(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    return mx, amax


def _ref_qx(x, nmax):
    """make_qx_quants with rmse_type 1 and no importance weights."""
    mx, amax = _signed_max(x)
    if amax < f(1e-15):
        return f(0)

    def sums(iscale):
        slx = sl2 = f(0)
        for v in x:
            li = f(max(-nmax, min(nmax - 1, _nearest(f(iscale * v)))))
            w = f(v * v)
            slx = f(slx + f(f(w * v) * li))
            sl2 = f(sl2 + f(f(w * li) * li))
        return slx, sl2

    slx, sl2 = sums(f(f(-nmax) / mx))
    scale = f(slx / sl2) if sl2 else f(0)
    best = f(scale * slx)
    for k in [k for k in range(-9, 10) if k]:
        slx, sl2 = sums(f(-f(f(nmax) + f(f(0.1) * f(k))) / mx))
        if sl2 > 0 and f(slx * slx) > f(best * sl2):
            scale = f(slx / sl2)
            best = f(scale * slx)
    return scale


def _ref_q3(x, nmax):
    """make_q3_quants with do_rmse."""
    mx, amax = _signed_max(x)
    if amax < f(1e-15):
        return f(0)
    iscale = f(f(-nmax) / mx)
    L = [max(-nmax, min(nmax - 1, _nearest(f(iscale * v)))) for v in x]
    sumlx = suml2 = f(0)
    for v, li in zip(x, L):
        w = f(v * v)
        sumlx = f(sumlx + f(f(w * v) * f(li)))
        suml2 = f(suml2 + f(f(w * f(li)) * f(li)))
    for _ in range(5):
        changed = 0
        for i, v in enumerate(x):
            w = f(v * v)
            slx = f(sumlx - f(f(w * v) * f(L[i])))
            if slx > 0:
                sl2 = f(suml2 - f(f(w * f(L[i])) * f(L[i])))
                new = max(-nmax, min(nmax - 1, _nearest(f(f(v * sl2) / slx))))
                if new != L[i]:
                    slx = f(slx + f(f(w * v) * f(new)))
                    sl2 = f(sl2 + f(f(w * f(new)) * f(new)))
                    if sl2 > 0 and f(f(slx * slx) * suml2) > f(f(sumlx * sumlx) * sl2):
                        L[i], sumlx, suml2 = new, slx, sl2
                        changed += 1
        if not changed:
            break
    return f(sumlx / suml2) if suml2 > 0 else f(0)


def _fp16(v):
    return f(np.float16(v))


_MIN_SCALE_TYPES = {  # sub-block, nmax, (rmin, rdelta, nstep, use_mad), scale code max
    "Q2_K": (16, 3, (-0.5, 0.1, 15, True), 15),
    "Q4_K": (32, 15, (-1.0, 0.1, 20, False), 63),
    "Q5_K": (32, 31, (-0.5, 0.1, 15, False), 63),
}


def _ref_min_scale_block(x, qtype):
    sub, nmax, search, top = _MIN_SCALE_TYPES[qtype]
    scales, mins = [], []
    for j in range(0, 256, sub):
        xs = x[j : j + sub]
        if qtype == "Q2_K":
            w = [abs(v) for v in xs]
        else:
            s2 = f(0)
            for v in xs:
                s2 = f(s2 + f(v * v))
            av = f(np.sqrt(f(s2 / f(32))))
            w = [f(av + abs(v)) for v in xs]
        s, m = _ref_qkx2(xs, w, nmax, *search)
        scales.append(s)
        mins.append(m)
    max_s, max_m = max([f(0), *scales]), max([f(0), *mins])
    inv_s = f(f(top) / max_s) if max_s > 0 else f(0)
    inv_m = f(f(top) / max_m) if max_m > 0 else f(0)
    d, dmin = _fp16(f(max_s / f(top))), _fp16(f(max_m / f(top)))
    out = np.zeros(256, np.float32)
    for j in range(len(scales)):
        dj = f(d * f(min(top, _nearest(f(inv_s * scales[j])))))
        mj = f(dmin * f(min(top, _nearest(f(inv_m * mins[j])))))
        for i in range(j * sub, (j + 1) * sub):
            li = max(0, min(nmax, _nearest(f(f(x[i] + mj) / dj)))) if dj else 0
            out[i] = f(f(dj * f(li)) - mj)
    return out


def _ref_signed_block(x, qtype):
    fit, nmax, levels, qmin, qmax = {
        "Q3_K": (_ref_q3, 4, 32, -32, 31),
        "Q6_K": (_ref_qx, 32, 128, -128, 127),
    }[qtype]
    scales = [fit(x[j : j + 16], nmax) for j in range(0, 256, 16)]
    ms, amax = _signed_max(scales)
    out = np.zeros(256, np.float32)
    if (qtype == "Q3_K" and not ms) or (qtype == "Q6_K" and amax < f(1e-15)):
        return out
    iscale = f(f(-levels) / ms)
    d = _fp16(f(f(1) / iscale))
    for j in range(16):
        dj = f(d * f(max(qmin, min(qmax, _nearest(f(iscale * scales[j]))))))
        for i in range(16 * j, 16 * j + 16):
            if dj:
                out[i] = f(dj * f(max(-nmax, min(nmax - 1, _nearest(f(x[i] / dj))))))
    return out


def reference_values(block: np.ndarray, qtype: str) -> np.ndarray:
    """What ggml's quantize_row_<qtype>_ref followed by dequantize gives for one 256-value block."""
    x = [f(v) for v in block]
    return _ref_min_scale_block(x, qtype) if qtype in _MIN_SCALE_TYPES else _ref_signed_block(x, qtype)


def awkward_blocks(n_blocks: int, seed: int) -> np.ndarray:
    """Gaussian blocks plus the shapes that stress a quantizer: tiny, one-signed, heavy-tailed,
    constant, all-zero, one outlier, mostly-zero."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_blocks, 256)).astype(np.float32)
    x[1] *= f(1e-3)
    x[2] = np.abs(x[2])
    x[3] = -np.abs(x[3]) - 1
    x[4] = rng.laplace(size=256)
    x[5] = 0.75
    x[6] = 0
    x[7, 100] = 40
    x[8, 16:] = 0
    x[9] = -2.5
    return x


# ---------------------------------------------------------------- K-quants


@pytest.mark.parametrize("qtype", KQUANTS)
def test_kquant_matches_ggml_reference_algorithm(qtype: str) -> None:
    x = awkward_blocks(12, seed=5)
    ours = dequantize(quantize(x, qtype), qtype, x.shape)
    for i, block in enumerate(x):
        ref = reference_values(block, qtype)
        assert np.array_equal(ours[i], ref), f"{qtype} block {i}: {np.abs(ours[i] - ref).max()}"


@pytest.mark.parametrize("qtype", KQUANTS)
def test_kquant_blocks_decode_identically_with_gguf(qtype: str) -> None:
    x = awkward_blocks(16, seed=9).reshape(4, 1024) * 3
    q = quantize(x, qtype)
    assert q.dtype == np.uint8 and q.shape == (4, traits(qtype).row_bytes(1024))
    ref = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[qtype]).reshape(x.shape)
    assert np.array_equal(dequantize(q, qtype, x.shape), ref)


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_constant_and_zero_rows_round_trip(qtype: str) -> None:
    b = max(traits(qtype).block_values, 32)
    x = np.zeros((3, 2 * b), np.float32)
    x[1] = -1.5
    x[2, ::2] = 1  # every other value 1, others 0
    y = dequantize(quantize(x, qtype), qtype, x.shape)
    assert np.array_equal(y[0], x[0])
    np.testing.assert_allclose(y[1:], x[1:], atol=0.07 if qtype == "Q2_K" else 0.02)


# ---------------------------------------------------------------- legacy and float types


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_bytes_equal_gguf(qtype: str) -> None:
    x = np.concatenate([gaussian(64, 512, seed=3), awkward_blocks(10, seed=4).reshape(5, 512)])
    x[-1, :32] = np.linspace(-1, 1, 32)  # exact halves hit the rounding rules
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(quantize(x, qtype), expected)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_float_types_match_gguf(qtype: str) -> None:
    x = gaussian(8, 64, seed=2) * 100
    q = quantize(x, qtype)
    assert q.shape == (8, 64 * (4 if qtype == "F32" else 2))
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(q, np.asarray(expected).view(np.uint8).reshape(q.shape))


# ---------------------------------------------------------------- round-trip error bounds

# Measured NMSE on gaussian(256, 4096, seed 0) (the `python -m qprof.quant.error_table` data) when
# these bounds were set; each bound is 1.5x the measured value.
MEASURED_NMSE = {
    "F32": 0.0,
    "F16": 4.309e-08,
    "BF16": 2.765e-06,
    "Q4_0": 7.389e-03,
    "Q4_1": 6.110e-03,
    "Q5_0": 1.825e-03,
    "Q5_1": 1.432e-03,
    "Q8_0": 2.868e-05,
    "Q2_K": 8.802e-02,
    "Q3_K": 2.278e-02,
    "Q4_K": 5.083e-03,
    "Q5_K": 1.303e-03,
    "Q6_K": 3.141e-04,
}


@pytest.fixture(scope="module")
def table() -> dict[str, float]:
    return {r.qtype: r.nmse for r in error_table(gaussian())}


def test_round_trip_error_bounds(table: dict[str, float]) -> None:
    assert set(table) == set(ALL_TYPES)
    for qtype, measured in MEASURED_NMSE.items():
        assert table[qtype] <= 1.5 * measured, f"{qtype}: NMSE {table[qtype]:.3e} > 1.5 x {measured:.3e}"
    assert table["F32"] == 0.0


def test_error_ordering(table: dict[str, float]) -> None:
    kq = [table[t] for t in ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")]
    assert kq == sorted(kq) and len(set(kq)) == len(kq)
    assert table["Q5_0"] < table["Q4_0"] and table["Q5_1"] < table["Q4_1"]
    # A min (affine) beats symmetric at equal bits; K-quants beat legacy at equal bits.
    assert table["Q4_1"] < table["Q4_0"] and table["Q5_1"] < table["Q5_0"]
    assert table["Q4_K"] < table["Q4_0"] and table["Q5_K"] < table["Q5_0"]


def test_error_scales_with_input() -> None:
    """Block scales are relative: scaling the input by 2^k scales the output exactly."""
    x = gaussian(4, 512, seed=6)
    for qtype in ("Q4_0", "Q4_K", "Q6_K"):
        y1 = dequantize(quantize(x, qtype), qtype, x.shape)
        y8 = dequantize(quantize(x * 8, qtype), qtype, x.shape)
        assert np.array_equal(y8, y1 * 8)


def test_error_table_cli(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--rows", "8", "--cols", "512"])
    out = capsys.readouterr().out
    assert "| type | bits/weight | NMSE | max abs err |" in out
    assert "| Q3_K | 3.4375 |" in out and "| Q6_K | 6.5625 |" in out
    assert round_trip_error(gaussian(8, 512), "Q8_0").nmse < 1e-4


def test_error_table_cli_bad_width(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--cols", "100"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "qprof: error: Q4_0 needs rows that are a multiple of 32 values, got rows of 100"
    )


# ---------------------------------------------------------------- bad input


def test_row_length_not_multiple_of_block() -> None:
    with pytest.raises(UnsupportedError, match=r"^Q4_K needs rows that are a multiple of 256 values, got rows of 576$"):
        quantize(np.zeros((2, 576), np.float32), "Q4_K")
    with pytest.raises(UnsupportedError, match="Q8_0 .* got rows of 100"):
        quantize(np.zeros((2, 100), np.float32), "Q8_0")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(bad: float) -> None:
    x = np.zeros((2, 256), np.float32)
    x[1, 7] = bad
    with pytest.raises(QprofError, match="cannot quantize to Q6_K: input has NaN or infinite values"):
        quantize(x, "Q6_K")


def test_values_too_large_for_fp16_scales() -> None:
    x = np.full((1, 256), 1e9, np.float32)
    with pytest.raises(QprofError, match="too large for its float16 block scales"):
        quantize(x, "Q4_K")
    with pytest.raises(QprofError, match="exceed the F16 range"):
        quantize(x, "F16")


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if traits(t).family != "float"])
def test_large_values_round_trip_or_raise(qtype: str) -> None:
    """Never silent garbage: each magnitude either keeps its relative error or is refused."""
    base = np.random.default_rng(0).uniform(-1, 1, (2, 256)).astype(np.float32)
    refused = []
    for magnitude in (1e37, 1e9, 1e7, 1e6, 1e5, 3e4):
        x = base * np.float32(magnitude)
        try:
            y = dequantize(quantize(x, qtype), qtype, x.shape).astype(np.float64)
        except QprofError as e:
            assert "too large for its float16 block scales" in str(e)
            refused.append(magnitude)
            continue
        nmse = ((y - x) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
        assert nmse < MEASURED_NMSE[qtype], f"{qtype} at {magnitude:g}: NMSE {nmse:.3e}"
    assert 1e37 in refused and 3e4 not in refused  # every type holds 3e4; none holds 1e37


def test_shape_and_type_errors() -> None:
    with pytest.raises(QprofError, match=r"2-D \(rows, cols\) array, got shape \(256,\)"):
        quantize(np.zeros(256, np.float32), "Q4_K")
    with pytest.raises(UnsupportedError, match="unsupported tensor type 'Q7_K'"):
        quantize(np.zeros((1, 256), np.float32), "Q7_K")
