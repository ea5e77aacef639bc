"""How many CPU threads torch may use (`-t/--threads`), and the default for a shared machine.

torch's intra-op threads spin while they wait for each other. When more of them run than there
are idle cores, each op waits for a thread that is not scheduled: on a loaded 2-core box the
default (one thread per core) made CPU decode ~8x slower than one thread (tg128 24 vs 197 tok/s;
one attention call 40 ms vs 0.16 ms, measured for issue 12). qprof therefore defaults to half the CPUs it may run on.
"""

from __future__ import annotations

import os

from qprof.errors import QprofError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Half the usable CPUs, at least one: leaves room for whatever else the machine runs."""
    return max(1, usable_cpus() // 2)


def check_threads(n: int, option: str = "-t") -> int:
    if n < 1:
        raise QprofError(f"{option}: {n} threads; need at least 1")
    return n


def set_threads(n: int) -> None:
    """Set torch's intra-op thread count for everything that runs after (the CPU runtime's ops)."""
    import torch

    check_threads(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
