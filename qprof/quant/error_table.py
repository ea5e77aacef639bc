"""Round-trip error of every type on Gaussian data, as a markdown table (`python -m qprof.quant.error_table`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from qprof.errors import QprofError
from qprof.quant.dequant import dequantize
from qprof.quant.quantize import quantize
from qprof.quant.traits import ALL_TYPES, traits


@dataclass(frozen=True)
class RoundTripError:
    qtype: str
    bits_per_weight: float
    nmse: float  # sum((deq(q(x)) - x)^2) / sum(x^2)
    max_abs: float


def gaussian(rows: int = 256, cols: int = 4096, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def round_trip_error(x: np.ndarray, qtype: str) -> RoundTripError:
    y = dequantize(quantize(x, qtype), qtype, x.shape)
    err = (y - x).astype(np.float64)
    nmse = float((err * err).sum() / np.square(x, dtype=np.float64).sum())
    return RoundTripError(qtype, traits(qtype).bits_per_weight, nmse, float(np.abs(err).max()))


def error_table(x: np.ndarray, qtypes: tuple[str, ...] = ALL_TYPES) -> list[RoundTripError]:
    return [round_trip_error(x, t) for t in qtypes]


def to_markdown(rows: list[RoundTripError]) -> str:
    lines = ["| type | bits/weight | NMSE | max abs err |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r.qtype} | {r.bits_per_weight:g} | {r.nmse:.3e} | {r.max_abs:.4f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--cols", type=int, default=4096, help="a multiple of 256 so every type applies")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        rows = error_table(gaussian(a.rows, a.cols, a.seed))
    except QprofError as e:
        print(f"qprof: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"Gaussian N(0,1) data, {a.rows}x{a.cols}, seed {a.seed}\n")
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
