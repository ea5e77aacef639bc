"""The driver of a bench spread over GPUs (--gpus) or a Ray cluster (--ray): one results file, rows as they finish.

It hands the plan's slices to a pool, prints and appends every row the moment it arrives, names a group
that fails (with its error) and carries on unless --fail-fast, and keeps every finished row on Ctrl-C.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from qprof.bench import gpus as gpu_info
from qprof.bench.params import BenchParams
from qprof.bench.slices import SliceJob, split_plan
from qprof.errors import QprofError

Say = Callable[[str], None]


def choose_pool(gpus_text: str | None, ray_address: str | None, say: Say):
    """A LocalPool or RayPool for the options given; None where --gpus finds one GPU or none (a plain run)."""
    if gpus_text is not None and ray_address:
        raise QprofError("--gpus and --ray: choose one (under --ray, Ray gives each task its own GPU)")
    if ray_address:
        from qprof.bench.ray_pool import RayPool

        return RayPool(ray_address)
    found = gpu_info.list_gpus()
    chosen = gpu_info.select_gpus(gpus_text, found)
    if len(found) <= 1:
        have = f"one GPU, {found[0].label()}" if found else "no GPU"
        say(f"--gpus {gpus_text}: this host has {have}; running in this process, as without --gpus")
        return None
    from qprof.bench.workers import LocalPool

    say(f"--gpus {gpus_text}: one worker process per GPU, pinned with CUDA_VISIBLE_DEVICES: "
        + ", ".join(g.label() for g in chosen))
    return LocalPool(chosen)


@dataclass
class Tally:
    """What the driver has seen of each slice, by slice index."""

    where: dict[int, str] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)  # done, failed or stopped
    done: set[int] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)  # one line per failed group
    runtimes: list[str] = field(default_factory=list)
    kept: int = 0


class Spread:
    """Turns the pool's events into table rows, saved rows, progress and one line per failure."""

    def __init__(self, pool, printer, progress, save: Callable[[dict], None] | None, fail_fast: bool, say: Say):
        self.pool = pool
        self.printer = printer
        self.progress = progress
        self.save = save
        self.fail_fast = fail_fast
        self.say = say
        self.tally = Tally()
        self.out = sys.stdout

    def _where(self, job: SliceJob) -> str:
        return self.tally.where.get(job.slice.index) or self.pool.describe(job)

    def _note(self, job: SliceJob, text: str) -> None:
        self.progress.clear()
        click.echo(f"[{self._where(job)}] {text}", err=True)

    def _row(self, job: SliceJob, row: dict) -> None:
        if self.save is not None:
            self.save(row)
        t = self.tally
        t.kept += 1
        t.rows[job.slice.index] = t.rows.get(job.slice.index, 0) + 1
        if row.get("runtime") and row["runtime"] not in t.runtimes:
            t.runtimes.append(row["runtime"])
        self.progress.clear()
        self.out.write(self.printer.row(row))
        self.out.flush()

    def _error(self, job: SliceJob, message: str) -> None:
        t = self.tally
        t.ended.add(job.slice.index)
        if self.pool.stop_reason and message.startswith(self.pool.stop_reason):
            return  # stopped by us (--fail-fast, Ctrl-C): not a failure of its own
        t.failed.append(f"{job.slice.label()} on {self._where(job)}: {message}")
        kept = t.rows.get(job.slice.index, 0)
        then = "stopping the rest (--fail-fast)" if self.fail_fast else "carrying on with the rest"
        self.progress.clear()
        self.say(f"{job.slice.label()} on {self._where(job)} failed: {message}; its {kept} finished row(s) "
                 f"are kept; {then}")
        if self.fail_fast:
            self.pool.stop(f"stopped by --fail-fast after {job.slice.label()} failed")

    def handle(self, job: SliceJob, event: dict) -> None:
        kind = event.get("kind")
        if kind == "start":
            self.tally.where[job.slice.index] = self.pool.place(job, event)
            self.progress.clear()
            self.say(f"{job.slice.label()}: {job.slice.n_rows()} row(s) on {self._where(job)}")
        elif kind in ("log", "warn", "stderr"):
            self._note(job, event.get("text", ""))
        elif kind == "step":
            self.progress.step(f"{self._where(job)} {event.get('label', '')}")
        elif kind == "row":
            self._row(job, event["row"])
        elif kind == "error":
            self._error(job, event.get("message", "unknown error"))
        elif kind == "done":
            self.tally.ended.add(job.slice.index)
            self.tally.done.add(job.slice.index)

    def run(self, jobs: list[SliceJob]) -> bool:
        """True when it ran to the end, False on Ctrl-C (the pool is stopped and closed either way)."""
        try:
            for job, event in self.pool.run(jobs):
                self.handle(job, event)
        except KeyboardInterrupt:
            self.pool.stop("interrupted")
            return False
        finally:
            self.pool.close()
        return True


def spread_bench(pool, params: BenchParams, device: str | None, fmt: str, results: tuple[Path, str] | None,
                 bandwidth: float | None, tflops: float | None, fail_fast: bool, say: Say) -> None:
    """Run the plan's slices on the pool; results is (the file rows are appended to, why there), None for --no-save."""
    from qprof.bench.formats import make_printer
    from qprof.bench.progress import Progress
    from qprof.bench.record import build_info
    from qprof.bench.results import append_row

    pool.prepare(say)
    slices = split_plan(params, pool.width())
    jobs = [SliceJob(params, s, device, bandwidth, tflops) for s in slices]
    say(f"{len(slices)} group(s) of the plan, each loading its model once, over {pool.width()} GPU(s)")
    commit, number = build_info()
    columns = [*params.varying(), *pool.columns]
    printer = make_printer(fmt, columns, device or "cuda", f"{commit} ({number})")
    progress = Progress(params.n_rows() * (params.repetitions + int(params.warmup)))
    save = None if results is None else (lambda row: append_row(results[0], row))
    where = "not saved (--no-save)" if results is None else f"in {results[0]}"
    spread = Spread(pool, printer, progress, save, fail_fast, say)
    sys.stdout.write(printer.header())
    sys.stdout.flush()
    start = time.perf_counter()
    try:
        finished = spread.run(jobs)
    finally:
        progress.close()
        sys.stdout.write(printer.footer())
        sys.stdout.flush()
    t = spread.tally
    if not finished:
        left = [s.label() for s in slices if s.index not in t.ended]
        click.echo(f"qprof: interrupted; kept {t.kept} finished row(s) {where}"
                   + (f"; unfinished: {', '.join(left)}" if left else ""), err=True)
        raise SystemExit(130)
    if t.failed:
        more = f" (and {len(t.failed) - 1} more, listed above)" if len(t.failed) > 1 else ""
        skipped = len(slices) - len(t.done) - len(t.failed)
        stopped = f"; {skipped} more group(s) stopped or never started (--fail-fast)" if skipped else ""
        raise QprofError(f"{len(t.failed)} of {len(slices)} group(s) failed: {t.failed[0]}{more}{stopped}; "
                         f"{t.kept} finished row(s) kept {where}")
    places = ", ".join(sorted(set(t.where.values())))
    say(f"{t.kept} row(s) {'' if results is None else 'appended '}{where} from {len(slices)} group(s) on {places} "
        f"in {time.perf_counter() - start:.1f} s; runtime: {', '.join(t.runtimes)}")
