"""A `qprof bench --gpus` worker that dies hard (SIGKILL) after the first row of a tiny-q8_0 slice.

tests/test_bench_spread.py points qprof.bench.workers.WORKER_ARGV here to check that a crash keeps
the rows already sent, names the group, and that the driver carries on with the rest.
"""

import os
import signal
import sys

from qprof.bench import gpu_worker

CRASH_MODEL = "tiny-q8_0"
real_run_slice = gpu_worker.run_slice


def run_slice(job, emit):
    def emit_then_crash(event):
        emit(event)
        if event["kind"] == "row" and job.slice.model == CRASH_MODEL:
            print("crashing on purpose after one row", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    real_run_slice(job, emit_then_crash)


gpu_worker.run_slice = run_slice
sys.exit(gpu_worker.main())
