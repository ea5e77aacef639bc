"""`qprof bench --gpus`: one worker process per GPU, pinned with CUDA_VISIBLE_DEVICES, one slice at a time.

A slice runs in a fresh child process (`python -m qprof.bench.gpu_worker`), so a crash takes down one slice,
not the bench, and its GPU memory goes back to the driver when it exits. A GPU gets its next slice only
after its last worker has exited, so no two workers ever share a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from qprof.bench.gpu_worker import job_message
from qprof.bench.slice_run import TERMINAL
from qprof.bench.slices import GpuInfo, SliceJob

# How a worker is started; tests point it at a worker that crashes on purpose.
WORKER_ARGV = [sys.executable, "-m", "qprof.bench.gpu_worker"]
STDERR_TAIL = 20  # lines of a worker's stderr kept to explain a crash
STOP_GRACE_S = 5.0  # after SIGTERM, how long a worker may take before SIGKILL


def worker_env(gpu: GpuInfo) -> dict[str, str]:
    """The driver's environment, pinned to one GPU, importing the same qprof the driver runs."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = gpu.uuid or str(gpu.index)  # a UUID names the board whatever the order
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # so a plain index means what nvidia-smi means by it
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"worker killed by {signal.Signals(-code).name}"
        return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


@dataclass
class Worker:
    job: SliceJob
    proc: subprocess.Popen
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=STDERR_TAIL))
    terminal: dict | None = None
    threads: list[threading.Thread] = field(default_factory=list)


class LocalPool:
    """Runs slices on this host's GPUs; run() yields (job, event) as events arrive from any worker."""

    def __init__(self, gpus: list[GpuInfo], argv: list[str] | None = None):
        self.gpus = list(gpus)
        self.argv = list(argv or WORKER_ARGV)
        self.events: queue.Queue = queue.Queue()
        self.running: dict[int, Worker] = {}  # GPU index -> its one worker
        self.stop_reason: str | None = None

    columns = ("gpu_index",)  # table columns that tell the rows' places apart

    def prepare(self, say) -> None:
        pass

    def width(self) -> int:
        return len(self.gpus)

    def describe(self, job: SliceJob) -> str:
        return job.gpu.label() if job.gpu else "a GPU"

    def place(self, job: SliceJob, start: dict) -> str:
        return job.gpu.label() if job.gpu else self.describe(job)

    def _launch(self, job: SliceJob) -> Worker:
        proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=worker_env(job.gpu), start_new_session=True)  # Ctrl-C reaches the driver only
        worker = Worker(job, proc)
        self.events.put((worker, {"kind": "spawn", "pid": proc.pid}))  # before any event the worker sends
        err = threading.Thread(target=self._read_stderr, args=(worker,), daemon=True)
        out = threading.Thread(target=self._read_stdout, args=(worker, err), daemon=True)
        worker.threads = [err, out]
        err.start()
        out.start()
        try:
            proc.stdin.write(job_message(job))
            proc.stdin.flush()
        except OSError:  # it died at once; the exit event says how
            pass
        return worker

    def _read_stderr(self, worker: Worker) -> None:
        for raw in worker.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                worker.tail.append(line)
                self.events.put((worker, {"kind": "stderr", "text": line}))

    def _read_stdout(self, worker: Worker, err: threading.Thread) -> None:
        for raw in worker.proc.stdout:
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or "kind" not in event:
                event = {"kind": "stderr", "text": raw.decode("utf-8", "replace").rstrip()}
            self.events.put((worker, event))
        code = worker.proc.wait()
        err.join()
        self.events.put((worker, {"kind": "exit", "code": code}))

    def run(self, jobs: list[SliceJob]) -> Iterator[tuple[SliceJob, dict]]:
        pending = collections.deque(jobs)
        free = list(self.gpus)
        while pending or self.running:
            while pending and free and self.stop_reason is None:
                gpu = free.pop(0)
                self.running[gpu.index] = self._launch(replace(pending.popleft(), gpu=gpu))
            if not self.running:
                return
            try:
                worker, event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event["kind"] != "exit":
                if event["kind"] in TERMINAL:
                    worker.terminal = event
                yield worker.job, event
                continue
            # the process is gone: only now may its GPU take another slice
            self._close_stdin(worker)
            del self.running[worker.job.gpu.index]
            free.append(worker.job.gpu)
            free.sort(key=self.gpus.index)
            if worker.terminal is None:
                reason = self.stop_reason or exit_reason(event["code"])
                last = worker.tail[-1] if worker.tail and not self.stop_reason else ""
                yield worker.job, {"kind": "error", "message": reason + (f": {last}" if last else "")}
            yield worker.job, {"kind": "exit", "code": event["code"]}

    @staticmethod
    def _close_stdin(worker: Worker) -> None:
        with contextlib.suppress(OSError):
            worker.proc.stdin.close()

    def stop(self, reason: str) -> None:
        """End every running worker (SIGTERM, then SIGKILL); run() then reports them as stopped."""
        self.stop_reason = reason
        for worker in list(self.running.values()):
            if worker.proc.poll() is None:
                worker.proc.terminate()
        for worker in list(self.running.values()):
            try:
                worker.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    def close(self) -> None:
        """Nothing may outlive the driver: stop what still runs and release the pipes."""
        if self.running:
            self.stop(self.stop_reason or "the driver stopped")
        for worker in list(self.running.values()):
            self._close_stdin(worker)
            for thread in worker.threads:
                thread.join(timeout=STOP_GRACE_S)
