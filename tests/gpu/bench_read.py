"""The card's streaming read timed several ways (a benchmark, not a test): which timing the ceiling should use.

qprof's read ceiling (qprof/ceilings/measure.py) times kernels/ceiling.cu's stream_read_sum over >= 8x the L2.
This prints, for one buffer, the read timed with one launch between an event pair (the card idle before each
sample, after the host's synchronize) and with k launches back to back between one pair; then torch's float16
sum over 4 GiB, as tests/gpu/bench_matvec.py measures it.
Run: python3 tests/gpu/bench_read.py [--mib 1024] [--launches 1,4,16]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--launches", default="1,4,16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_read: no CUDA GPU", file=sys.stderr)
        return 2
    from qprof.ceilings.measure import BANDWIDTH_REPEATS, measure_read, time_ms

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n_bytes = args.mib << 20
    print(f"{torch.cuda.get_device_name()}: stream_read_sum over {args.mib} MiB, median (best) of "
          f"{BANDWIDTH_REPEATS} samples")
    for k in (int(x) for x in args.launches.split(",")):
        r = measure_read(n_bytes, sms, launches=k)
        print(f"  {k:3d} launch(es) a sample, back to back: {r.median / 1e9:7.0f} ({r.best / 1e9:.0f}) GB/s",
              flush=True)
    torch.cuda.empty_cache()
    a = torch.ones(2 << 30, dtype=torch.float16, device="cuda")
    ms = statistics.median(time_ms(lambda: a.sum(dtype=torch.float32), BANDWIDTH_REPEATS))
    print(f"  torch float16 sum over 4 GiB, one call a sample: {a.nbytes / (ms * 1e-3) / 1e9:7.0f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
