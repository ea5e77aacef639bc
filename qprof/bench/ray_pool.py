"""`qprof bench --ray`: one Ray task per slice, each asking for one GPU, on a running Ray cluster.

Each task is a Ray generator that yields the slice's events as they happen, so rows reach the driver (and
the results file) while the task still runs. Workers make or find the models themselves: qprof must be
installed on every node, a workload name is made there from its seed, and a file path must exist there.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

from qprof.bench.slice_run import TERMINAL, host_label, one_line, run_slice
from qprof.bench.slices import GpuInfo, SliceJob
from qprof.errors import QprofError

INSTALL_HINT = "pip install 'qprof[ray]'"
START_HINT = "start one with `ray start --head` (more nodes: `ray start --address HEAD:6379`)"
PROBE_S = 5.0  # ray.init retries an address where nothing listens for minutes; a plain TCP connect does not


def head_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of the head that ray.init would contact; None where only Ray can tell (a ray:// client)."""
    if "://" in address:
        return None
    if address == "auto":
        try:  # where `ray start` recorded the cluster on this host (Ray's own lookup; not a public API)
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            address = None
        except Exception:  # noqa: BLE001 -- another Ray version: let ray.init look for it
            return None
        if address is None:
            raise QprofError(f"--ray auto: no Ray cluster runs on this host; {START_HINT}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise QprofError(f"--ray {address!r}: expected HOST:PORT of the Ray head (e.g. head:6379) or auto")
    return host.strip("[]"), int(port)


def probe_head(address: str) -> None:
    """Fail in seconds, with one line, where no Ray head answers."""
    endpoint = head_endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=PROBE_S).close()
    except OSError as exc:
        raise QprofError(f"cannot join the Ray cluster at {address}: nothing answers at {endpoint[0]}:{endpoint[1]} "
                         f"({exc.strerror or exc}); {START_HINT}") from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise QprofError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT} (or pip install ray) "
                         "on the driver and on every node") from None
    return ray


def slice_task(job: SliceJob) -> Iterator[dict]:
    """The body of the Ray task: run the slice on the GPU Ray gave us and yield its events as they come."""
    import ray

    ids = ray.get_gpu_ids()
    gpu = GpuInfo(int(ids[0])) if ids and str(ids[0]).isdigit() else None
    events: queue.Queue = queue.Queue()

    def body() -> None:
        try:
            run_slice(replace(job, gpu=gpu), events.put)
        except BaseException as exc:  # noqa: BLE001 -- the generator below must always get a last event
            events.put({"kind": "error", "message": one_line(exc)})

    # a thread, because run_slice reports through a callback and a Ray generator can only yield
    thread = threading.Thread(target=body, name="qprof-slice", daemon=True)
    thread.start()
    while True:
        event = events.get()
        yield event
        if event["kind"] in TERMINAL:
            break
    thread.join()


class RayPool:
    """Submits every slice at once; Ray runs as many side by side as the cluster has GPUs."""

    def __init__(self, address: str):
        self.address = address
        self.ray = import_ray()
        self.owned = False
        self.tasks: list = []
        self.events: queue.Queue = queue.Queue()
        self.stop_reason: str | None = None
        self.n_gpus = 0

    columns = ("host", "gpu_index")

    def prepare(self, say) -> None:
        self.connect()
        joined = getattr(self.ray.get_runtime_context(), "gcs_address", None) or self.address
        say(f"Ray cluster at {joined} (--ray {self.address}): {self.n_gpus} GPU(s); one task per group, "
            "each asking for 1 GPU")

    def connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():  # a caller that already joined a cluster (a test, a notebook) keeps it
            probe_head(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as exc:  # noqa: BLE001 -- ConnectionError, a timeout, a bad address: all one line
                raise QprofError(f"cannot join the Ray cluster at {self.address}: {one_line(exc)}; "
                                 f"{START_HINT}") from None
            self.owned = True
        self.n_gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.n_gpus < 1:
            raise QprofError(f"the Ray cluster at {self.address} has no GPUs, and every qprof task asks for one "
                             "(start the nodes with their GPUs visible, or `ray start --num-gpus N`)")

    def width(self) -> int:
        return self.n_gpus

    def describe(self, job: SliceJob) -> str:
        return "a Ray worker"

    def place(self, job: SliceJob, start: dict) -> str:
        return host_label(start)

    def _follow(self, job: SliceJob, generator) -> None:
        """Drain one task's generator into the shared queue; a task that dies becomes an error event."""
        ended = False
        try:
            for ref in generator:
                event = self.ray.get(ref)
                ended = ended or event.get("kind") in TERMINAL
                self.events.put((job, event))
        except Exception as exc:  # noqa: BLE001 -- the worker died, was cancelled, or Ray failed
            if not ended:
                self.events.put((job, {"kind": "error", "message": self.stop_reason or one_line(exc)}))
                ended = True
        if not ended:
            self.events.put((job, {"kind": "error", "message": "the Ray task ended without a result"}))
        self.events.put((job, {"kind": "exit"}))

    def run(self, jobs: list[SliceJob]) -> Iterator[tuple[SliceJob, dict]]:
        # a streaming generator: each yielded event reaches the driver while the task still runs
        task = self.ray.remote(num_gpus=1, max_retries=0, num_returns="streaming")(slice_task)
        for job in jobs:
            generator = task.remote(job)
            self.tasks.append(generator)
            # one thread per task, because each generator can only be read in turn
            threading.Thread(target=self._follow, args=(job, generator), daemon=True).start()
        left = len(jobs)
        while left:
            try:
                job, event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            left -= event["kind"] == "exit"
            yield job, event

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        for generator in self.tasks:
            with contextlib.suppress(Exception):  # already finished: nothing left to stop
                self.ray.cancel(generator, force=True)

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
            self.owned = False
