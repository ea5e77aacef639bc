"""Checks of command-line values that bench, profile and generate share, run before any model is loaded or timed.

A typo in the third model of a `-m` list, an output folder that does not exist or a prompt past the
model's context must cost nothing: each is one `qprof: error:` line before the first benchmark.
"""

from __future__ import annotations

from pathlib import Path

from qprof.errors import QprofError


def check_output_file(path: str | Path | None, option: str, suffix: str | None = None) -> Path | None:
    """A file the command will write: its folder must exist (qprof does not make folders it was not asked to)."""
    if path is None:
        return None
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise QprofError(f"{option} {path}: the file must end in {suffix}")
    if path.is_dir():
        raise QprofError(f"{option} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise QprofError(f"{option} {path}: folder {parent}/ does not exist (create it first)")
    return path


def declared_context(spec: str) -> tuple[int, str]:
    """(tokens of context, where that number comes from) for a -m value, without loading tensors.

    A file's header is read (the metadata only); a workload name needs no file: its recipe's config
    is what the file will declare. An unknown name or a missing or malformed file fails here.
    """
    from qprof.workloads.registry import get_workload
    from qprof.workloads.resolve import looks_like_path

    path = Path(spec).expanduser()
    if not path.exists() and looks_like_path(spec):
        raise QprofError(f"model file not found: {spec}")
    if path.exists():
        from qprof.model.gguf_file import read_metadata
        from qprof.model.gguf_reader import open_reader

        meta = read_metadata(open_reader(path))
        arch = meta.get("general.architecture")
        key = f"{arch}.context_length"
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            return 0, key  # load_model names the problem when the model is loaded
        return value, key
    workload = get_workload(spec)
    return workload.config.n_ctx, f"{workload.config.arch}.context_length of workload {spec}"


def check_context(need: int, what: str, model: str, declared: int, source: str) -> None:
    """`what` (e.g. '-p 1000 + -n 32') needs `need` positions; refuse it past the model's declared context."""
    if declared and need > declared:
        raise QprofError(f"{what} needs {need} tokens of context, but {model} declares {declared} ({source})")
