"""Build the runtime for a device from a loaded model: the one place that knows both kinds."""

from __future__ import annotations

from qprof.annotate import Annotator
from qprof.errors import QprofError
from qprof.runtime.options import RuntimeOptions

DEVICES = ("cpu", "cuda")


def create_runtime(model, device: str = "cpu", options: RuntimeOptions | None = None,
                   annotator: Annotator | None = None, n_ctx: int | None = None):
    """A Runtime (see qprof.runtime.base) for `device`; n_ctx defaults to min(model context, 4096)."""
    options = options or RuntimeOptions()
    annotator = annotator or Annotator(nvtx_enabled=options.nvtx)
    n_ctx = n_ctx or min(model.config.n_ctx, 4096)
    if device == "cpu":
        from qprof.runtime.cpu import CpuRuntime

        return CpuRuntime(model, options=options, annotator=annotator, n_ctx=n_ctx)
    if device == "cuda":
        from qprof.runtime.cuda.driver import require_cuda

        require_cuda()
        from qprof.runtime.cuda.forward import CudaRuntime

        return CudaRuntime(model, options=options, annotator=annotator, n_ctx=n_ctx)
    raise QprofError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
