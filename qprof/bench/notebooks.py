"""Execute every notebook headless (nbclient) over a results folder and export their charts as PNG.

    python -m qprof.bench.notebooks [--results DIR] [--charts DIR] [--card NAME] [--clean] [--executed DIR]

The results folder defaults to where `qprof bench` appends (the user data dir, or $QPROF_RESULTS's
folder) and the charts go beside it, DIR/charts. --card draws only the rows of one card. The
kernel is always the running interpreter (a kernelspec built on the fly), so a fresh venv or CI
needs no `ipykernel install`. The notebooks read QPROF_RESULTS_DIR and QPROF_CARD and write PNGs
to QPROF_CHARTS_DIR, which this module sets for the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qprof.errors import QprofError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def this_python_kernel_manager():
    """A jupyter KernelManager whose kernel is `sys.executable -m ipykernel_launcher`, whatever is installed."""
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    class ThisPythonKernelManager(KernelManager):
        # Unix sockets rather than TCP: no open ports, and no "running over TCP without encryption"
        # warning from every kernel on stderr.
        transport = "ipc"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # an absolute socket path: the kernel runs in the notebook's folder, the client does not
            self._socket_dir = tempfile.mkdtemp(prefix="qprof-kernel-")
            self.ip = os.path.join(self._socket_dir, "kernel")

        def cleanup_ipc_files(self) -> None:
            super().cleanup_ipc_files()
            with contextlib.suppress(OSError):
                os.rmdir(self._socket_dir)

        @property
        def kernel_spec(self):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} (qprof)",
                              language="python", resource_dir=str(NOTEBOOKS))

    return ThisPythonKernelManager


@dataclass
class NotebookRun:
    path: Path
    outputs: list[str] = field(default_factory=list)  # text printed by the cells
    images: int = 0  # image/png outputs shown

    def reasons(self) -> list[str]:
        """The notebook's own "[chart] no chart: why" lines (qprof.bench.charts.show prints them)."""
        return [line.strip() for text in self.outputs for line in text.splitlines() if "no chart:" in line]

    def summary(self) -> str:
        """One line per notebook, then why each missing chart is missing."""
        head = f"{self.path.name}: ran, " + (f"{self.images} chart(s) shown" if self.images else "no chart shown")
        return "\n".join([head, *(f"  {reason}" for reason in self.reasons())])


def execute_notebook(path: str | Path, results: Path, charts: Path | None, timeout: int = 600,
                     executed_dir: Path | None = None, card: str | None = None) -> NotebookRun:
    """Run every cell of one notebook; any cell error becomes a one-line QprofError naming the cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "QPROF_RESULTS_DIR": str(results), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    for name, value in (("QPROF_CHARTS_DIR", charts), ("QPROF_CARD", card)):
        if value is not None:
            env[name] = str(value)
        else:
            env.pop(name, None)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            kernel_manager_class=this_python_kernel_manager(),
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        raise QprofError(f"notebook {path.name} failed: {exc.ename}: {exc.evalue}") from None
    except (CellTimeoutError, DeadKernelError) as exc:
        raise QprofError(f"notebook {path.name} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    except (OSError, RuntimeError) as exc:  # the kernel could not start (ipykernel missing, ports, ...)
        raise QprofError(f"notebook {path.name}: cannot start a Python kernel ({exc})") from None
    finally:
        if executed_dir is not None:
            executed_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, executed_dir / path.name)
    run = NotebookRun(path)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                run.outputs.append(out.get("text", ""))
            elif "image/png" in out.get("data", {}):
                run.images += 1
            elif "text/plain" in out.get("data", {}):
                run.outputs.append(out["data"]["text/plain"])
    return run


def notebook_paths(folder: Path | None = None) -> list[Path]:
    folder = folder or NOTEBOOKS
    paths = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise QprofError(f"no notebooks in {folder}")
    return paths


def run_all(results: Path, charts: Path | None, folder: Path | None = None,
            executed_dir: Path | None = None, card: str | None = None) -> list[NotebookRun]:
    return [execute_notebook(p, results, charts, executed_dir=executed_dir, card=card)
            for p in notebook_paths(folder)]


def check_card(results: Path, card: str) -> None:
    """Refuse a card with no rows under results (a typo would otherwise redraw nothing, or wipe charts)."""
    from qprof.bench.charts import load_rows
    from qprof.bench.profile_charts import find_profiles

    if load_rows(results, card) or any(find_profiles(results / "profile", card)):
        return
    found = sorted({r["platform"] for r in load_rows(results, None)})
    raise QprofError(f"no rows measured on {card!r} under {results} "
                     f"(cards there: {', '.join(found) if found else 'none'})")


def main(argv: list[str] | None = None) -> int:
    from qprof.bench.charts import results_dir

    ap = argparse.ArgumentParser(prog="python -m qprof.bench.notebooks", description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=None,
                    help="folder of *.jsonl (default: where `qprof bench` appends, $QPROF_RESULTS_DIR overrides)")
    ap.add_argument("--charts", type=Path, default=None, help="PNG folder (default RESULTS/charts)")
    ap.add_argument("--card", default=None, help="only rows measured on this card, e.g. 'NVIDIA H200'")
    ap.add_argument("--clean", action="store_true",
                    help="delete the PNGs already in the charts folder first, so each one left was drawn now")
    ap.add_argument("--executed", type=Path, default=None, help="also write the executed notebooks here")
    args = ap.parse_args(argv)
    results = (args.results or results_dir()).resolve()
    charts = (args.charts or results / "charts").resolve()
    print(f"results: {results}; charts: {charts}; card: {args.card or 'every card'}")
    try:
        if args.card:
            check_card(results, args.card)
        if args.clean:
            for old in charts.glob("*.png"):
                old.unlink()
        runs = run_all(results, charts, executed_dir=args.executed, card=args.card)
    except QprofError as exc:
        print(f"qprof: error: {exc}", file=sys.stderr)
        return 2
    for run in runs:
        print(run.summary())
    pngs = sorted(charts.glob("*.png")) if charts.is_dir() else []
    print(f"charts in {charts}: {', '.join(p.name for p in pngs) if pngs else 'none (no rows of the needed kinds)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
