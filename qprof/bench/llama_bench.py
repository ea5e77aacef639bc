"""Run llama.cpp's llama-bench on the same GGUF files and tests as a qprof bench, or read its saved `-o json`.

qprof's -p/-n/-pg/-r become llama-bench's, with flash attention on and every layer on the GPU
(`-fa 1 -ngl 99`), as a GPU user of llama.cpp runs it. The records come back as llama-bench wrote
them; every failure (binary missing, non-zero exit, output that is not its JSON) is one line.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qprof.errors import QprofError

FLASH_ATTN = "1"
GPU_LAYERS = "99"  # more than any model has: all of them
NEEDED = ("n_prompt", "n_gen", "avg_ts")  # what a record must hold to be a measurement


@dataclass(frozen=True)
class LlamaBenchArgs:
    """The tests of the qprof run, in llama-bench's terms."""

    n_prompt: list[int]
    n_gen: list[int]
    pg: list[tuple[int, int]]
    repetitions: int
    warmup: bool = True

    @classmethod
    def from_params(cls, params) -> LlamaBenchArgs:
        return cls(list(params.n_prompt), list(params.n_gen), list(params.pg), params.repetitions, params.warmup)


def check_binary(path: str | Path) -> Path:
    """The llama-bench executable, or a one-line error saying what is wrong with the path."""
    binary = Path(path).expanduser()
    if not binary.exists():
        raise QprofError(f"--llama-bench {path}: no such file (build it: see the README, 'llama.cpp side by side')")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise QprofError(f"--llama-bench {path}: not an executable file")
    return binary


def command(binary: Path, model: Path, args: LlamaBenchArgs) -> list[str]:
    """llama-bench's command line for one model: same tests and repetitions, flash attention, all layers on GPU."""
    cmd = [str(binary), "-m", str(model), "-p", ",".join(map(str, args.n_prompt)),
           "-n", ",".join(map(str, args.n_gen))]
    for pp, tg in args.pg:
        cmd += ["-pg", f"{pp},{tg}"]
    cmd += ["-r", str(args.repetitions), "-fa", FLASH_ATTN, "-ngl", GPU_LAYERS, "-o", "json"]
    if not args.warmup:
        cmd.append("--no-warmup")
    return cmd


def parse(text: str, where: str) -> list[dict]:
    """llama-bench's `-o json` (a JSON array of records); anything else is a one-line error naming `where`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("["), text.rfind("]")  # a build that logs to stdout around the array
        try:
            data = json.loads(text[start:end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise QprofError(f"{where}: not llama-bench JSON (expected the array that `-o json` prints)") from None
    if not isinstance(data, list) or not data:
        raise QprofError(f"{where}: not llama-bench JSON (expected a non-empty array of records)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), (int, float)) for k in NEEDED):
            raise QprofError(f"{where}: record {i} is not a llama-bench result (needs {', '.join(NEEDED)})")
    return data


def read_json(path: str | Path) -> list[dict]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise QprofError(f"--llama-bench-json {path}: cannot read it ({exc.strerror or exc})") from None
    return parse(text, f"--llama-bench-json {path}")


def run(binary: Path, model: Path, args: LlamaBenchArgs, timeout_s: float | None = None) -> list[dict]:
    """Run llama-bench on one GGUF file and return its records."""
    cmd = command(binary, model, args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except OSError as exc:
        raise QprofError(f"cannot run llama-bench {binary}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise QprofError(f"llama-bench on {model.name} did not finish within {timeout_s:g} s") from None
    if proc.returncode != 0:
        last = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "no message")
        raise QprofError(f"llama-bench exited with status {proc.returncode} on {model.name}: {last}")
    return parse(proc.stdout, f"llama-bench on {model.name}")
