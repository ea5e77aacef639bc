"""Child process of `qprof bench --gpus`: runs one slice on the GPU it is pinned to; events as JSON lines.

The driver writes the pickled SliceJob to stdin and keeps stdin open; when the driver goes away the pipe
closes and the worker exits instead of holding the GPU. Events go to a private copy of stdout, and fd 1
is pointed at stderr, so a library that prints cannot corrupt the stream.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading

from qprof.bench.formats import to_json
from qprof.bench.slice_run import run_slice

ORPHANED_EXIT = 3  # the driver closed our stdin before we finished
LENGTH_BYTES = 8  # the pickled job comes after its length, so reading it never waits for more


def _read_exactly(fd: int, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            raise SystemExit(ORPHANED_EXIT)  # the driver went away before sending the whole job
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_job(fd: int):
    """The job from the raw stdin descriptor (no buffered reader that a watcher thread would share)."""
    size = int.from_bytes(_read_exactly(fd, LENGTH_BYTES), "big")
    return pickle.loads(_read_exactly(fd, size))


def job_message(job) -> bytes:
    data = pickle.dumps(job)
    return len(data).to_bytes(LENGTH_BYTES, "big") + data


def _exit_when_driver_goes(fd: int) -> None:
    while os.read(fd, 65536):
        pass
    os._exit(ORPHANED_EXIT)


def main() -> int:
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    stdin = sys.stdin.fileno()
    job = read_job(stdin)
    threading.Thread(target=_exit_when_driver_goes, args=(stdin,), daemon=True).start()
    lock = threading.Lock()

    def emit(event: dict) -> None:
        with lock:
            events.write(to_json(event) + "\n")
            events.flush()

    run_slice(job, emit)
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
