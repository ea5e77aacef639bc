"""The ctypes QkvArgs that fused_ops packs must match the kernel's struct byte for byte."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from qprof.runtime.cuda import kernels as K
from qprof.runtime.cuda.fused_ops import _QkvArgs, _Segment

HOST_LAYOUT = r"""
#include <cstddef>
#include <cstdio>
#include "qkv_args.cuh"
#define FIELD(S, F) printf(#S "." #F " %zu\n", offsetof(S, F));
int main() {
    FIELD(QkvSegment, w) FIELD(QkvSegment, type) FIELD(QkvSegment, rows) FIELD(QkvSegment, row_bytes)
    FIELD(QkvSegment, pad_)
    FIELD(QkvArgs, seg) FIELD(QkvArgs, xq) FIELD(QkvArgs, q_out) FIELD(QkvArgs, k_cache) FIELD(QkvArgs, v_cache)
    FIELD(QkvArgs, pos) FIELD(QkvArgs, rope_cs) FIELD(QkvArgs, eps) FIELD(QkvArgs, cols) FIELD(QkvArgs, head_dim)
    FIELD(QkvArgs, rope_dim) FIELD(QkvArgs, n_ctx) FIELD(QkvArgs, kv_f16) FIELD(QkvArgs, pad_)
    printf("sizeof.QkvSegment %zu\nsizeof.QkvArgs %zu\n", sizeof(QkvSegment), sizeof(QkvArgs));
}
"""


def _ctypes_layout() -> dict[str, int]:
    out = {f"QkvSegment.{name}": getattr(_Segment, name).offset for name, _ in _Segment._fields_}
    out.update({f"QkvArgs.{name}": getattr(_QkvArgs, name).offset for name, _ in _QkvArgs._fields_})
    out["sizeof.QkvSegment"] = ctypes.sizeof(_Segment)
    out["sizeof.QkvArgs"] = ctypes.sizeof(_QkvArgs)
    return out


def test_ctypes_qkv_args_match_the_kernel_struct(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the layout check compiles the kernel's header on the host")
    (tmp_path / "layout.cpp").write_text(HOST_LAYOUT)
    build = subprocess.run([gxx, "-std=c++17", f"-I{K.KERNEL_DIR}", "-o", str(tmp_path / "layout"),
                            str(tmp_path / "layout.cpp")], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True)
    kernel = {k: int(v) for k, v in (ln.split() for ln in run.stdout.splitlines())}
    assert kernel == _ctypes_layout()
    assert kernel["sizeof.QkvArgs"] == 152
