"""The layering the design promises: the analysis half knows no runtime, the runtime knows no profiler."""

from __future__ import annotations

import subprocess
import sys

ANALYSIS = ("qprof.analysis.pipeline", "qprof.analysis.report", "qprof.analysis.trace_export", "qprof.analysis.trim",
            "qprof.analysis.graph_ops", "qprof.commands.analyze")
RUNTIME = ("qprof.runtime.cuda.forward", "qprof.runtime.cuda.graphs", "qprof.runtime.cpu", "qprof.runtime.factory",
           "qprof.runtime.generate", "qprof.runtime.timed")


def _loaded_after(modules: tuple[str, ...], prefixes: tuple[str, ...]) -> list[str]:
    """Modules under `prefixes` that importing `modules` in a fresh interpreter loads."""
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def test_the_analysis_pipeline_imports_no_runtime_no_profiler_and_no_torch():
    assert _loaded_after(ANALYSIS, ("qprof.runtime", "qprof.profile", "torch")) == []


def test_the_runtime_imports_neither_the_profiler_nor_the_analysis():
    assert _loaded_after(RUNTIME, ("qprof.profile", "qprof.analysis")) == []


# Small modules with one purpose each (STYLE.md: under about 400 lines); a module past this has grown two.
MODULE_MAX_LINES = 420


def test_every_module_and_kernel_file_stays_small():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [*(root / "qprof").rglob("*.py"), *(root / "kernels").glob("*.cu*")]
    assert len(files) > 50
    long = {str(f.relative_to(root)): n for f in files if (n := len(f.read_text().splitlines())) > MODULE_MAX_LINES}
    assert not long, f"split these into modules of one purpose each: {long}"
