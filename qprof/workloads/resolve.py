"""Turn a -m argument into a GGUF path: an existing file, or a workload made on demand into the cache."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from qprof.errors import QprofError
from qprof.workloads.generation import GENERATOR_VERSION, write_requantized, write_synthetic
from qprof.workloads.recipes import plan_bytes, tensor_plan
from qprof.workloads.registry import ORIGINAL, Workload, get_workload


def cache_root() -> Path:
    """$QPROF_CACHE/workloads, else ~/.cache/qprof/workloads (the PTX cache lives beside it)."""
    from qprof.paths import cache_root

    return cache_root() / "workloads"


def workload_filename(name: str, seed: int = 0) -> str:
    return f"{name}.gguf" if seed == 0 else f"{name}-seed{seed}.gguf"


def cached_path(name: str, seed: int = 0) -> Path:
    # The generator version is part of the folder so files made by older generator code are never reused.
    return cache_root() / f"v{GENERATOR_VERSION}" / workload_filename(name, seed)


def source_path(workload: Workload) -> Path:
    """The real model file a real-model family starts from."""
    kind, _, what = (workload.source or "").partition(":")
    if kind == "packaged" and what == "smollm2":
        from qprof.model.packaged import smollm2_path

        return smollm2_path()
    raise QprofError(f"workload {workload.name!r} has an unknown source {workload.source!r}")


def expected_bytes(workload: Workload) -> int:
    """Bytes of tensor data the workload's file holds (its size less a few MB of metadata)."""
    if workload.recipe == ORIGINAL:
        try:
            return source_path(workload).stat().st_size
        except QprofError:  # not installed: the size is unknown, not an error for listing
            return 0
    return plan_bytes(tensor_plan(workload.config, workload.recipe))


def is_complete(path: Path, workload: Workload) -> bool:
    """Files appear only by atomic rename, so an existing one is whole unless it was cut later."""
    return path.is_file() and path.stat().st_size >= expected_bytes(workload)


def make_workload(
    name: str,
    out_dir: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write workload `name` (into out_dir, else the cache) unless a complete copy is there; returns its path.

    A file to be written is announced through `log` first (it can take tens of seconds), and
    progress(bytes written, bytes in all) follows each tensor."""
    workload = get_workload(name)
    if seed < 0:
        raise QprofError(f"seed must be >= 0, got {seed}")
    if workload.source and workload.recipe == ORIGINAL:
        src = source_path(workload)
        if out_dir is None:
            return src
        dest = Path(out_dir) / src.name
        if force or not dest.is_file():
            _copy_atomically(src, dest)
        return dest
    path = Path(out_dir) / workload_filename(name, seed) if out_dir is not None else cached_path(name, seed)
    if not force and is_complete(path, workload):
        return path
    try:  # an unusable folder fails here, before the announcement
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QprofError(f"cannot write {path}: {exc.strerror or exc}") from None
    start = time.perf_counter()
    if log:
        log(f"writing workload {name} ({expected_bytes(workload) / 1e9:.3f} GB) to {path} ...")
    if workload.source:
        write_requantized(workload, source_path(workload), path, seed, progress=progress)
    else:
        write_synthetic(workload, path, seed, progress=progress)
    if log:
        log(f"wrote {path} ({path.stat().st_size / 1e9:.3f} GB) in {time.perf_counter() - start:.1f} s")
    return path


def _copy_atomically(src: Path, dest: Path) -> None:
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise QprofError(f"cannot copy {src.name} to {dest}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith(".gguf") or spec.startswith((".", "~"))


def _to_stderr(message: str) -> None:
    print(f"qprof: {message}", file=sys.stderr)


def resolve_model(spec: str | Path, log: Callable[[str], None] | None = _to_stderr) -> Path:
    """An existing file path as given, or a workload name made on demand into the cache dir.

    Making a workload the first time can take a while (seconds for 7B random blocks), so it is
    announced through `log` (stderr by default; None for silence).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    spec = str(spec)
    if looks_like_path(spec):
        raise QprofError(f"model file not found: {spec}")
    return make_workload(spec, log=log)
