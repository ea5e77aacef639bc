"""Forward-pass kernels vs float64 torch references (GPU), plus their host-side shape rules (anywhere)."""

from __future__ import annotations

import pytest
import torch

from qprof.check.forward_cases import ForwardCase, forward_cases, register_ops
from qprof.check.registry import Op, Selection
from qprof.errors import UnsupportedError
from qprof.runtime.cuda import ops
from qprof.runtime.cuda.graphs import graph_blocker
from qprof.runtime.cuda.kv_cache import MaskPolicy
from qprof.runtime.options import RuntimeOptions

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU (torch.cuda.is_available() is False)")
CASES = forward_cases()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op_matches_float64_reference(case: ForwardCase):
    res = case.run()
    assert res.passed, f"{case.name}: NMSE {res.nmse:.3e} (limit {res.threshold:.0e}), {res.n_nan} NaN"


def test_cases_cover_every_forward_op_and_both_attention_phases():
    ops_seen = {c.op for c in CASES}
    assert ops_seen == {"rmsnorm", "add", "swiglu", "rope", "kv_write", "attention", "argmax"}
    labels = [c.label for c in CASES if c.op == "attention"]
    assert any(lb.startswith("decode 32/8x128") for lb in labels)  # Mistral-7B's attention shape
    assert any("n=512" in lb for lb in labels)
    assert {m for lb in labels for m in ("mask=skip", "mask=device", "mask=upload") if m in lb} == {
        "mask=skip", "mask=device", "mask=upload"}
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.name for c in forward_cases(quick=True)} == {c.name for c in CASES if not c.model_shape}


def test_register_ops_feeds_qprof_check_by_shape_set():
    ops_by_name: dict[str, Op] = {}
    register_ops(lambda op: ops_by_name.setdefault(op.name, op))
    assert set(ops_by_name) == {c.op for c in CASES}
    small = [c for op in ops_by_name.values() for c in op.cases(Selection(shapes="small"))]
    every = [c for op in ops_by_name.values() for c in op.cases(Selection(shapes="all"))]
    assert len(every) == len(CASES) and 0 < len(small) < len(every)
    assert all(c.measure is not None and c.qtype is None for c in every)
    assert ops_by_name["kv_write"].threshold == 0.0 and ops_by_name["attention"].threshold <= 1e-9


def test_unsupported_head_size_is_one_line():
    with pytest.raises(UnsupportedError, match="attention head size 80 is not supported"):
        ops.AttentionShape(8, 2, 80)


def test_heads_must_divide_into_kv_heads():
    with pytest.raises(UnsupportedError, match="9 query heads do not divide into 2 KV heads"):
        ops.AttentionShape(9, 2, 64)


@pytest.mark.parametrize("n_ctx", [1, 128, 129, 4096, 32768, 131072])
@pytest.mark.parametrize("n_head_kv", [1, 3, 8])
def test_decode_splits_cover_the_context(n_ctx, n_head_kv):
    n_split = ops.decode_splits(n_ctx, n_head_kv)
    assert 1 <= n_split <= ops.MAX_DECODE_SPLITS and n_split <= max(1, -(-n_ctx // 32))
    assert -(-n_ctx // n_split) <= ops.DECODE_SPLIT_MAX_KEYS or n_split == ops.MAX_DECODE_SPLITS
    if n_ctx >= 32 * ops.DECODE_TARGET_CTAS:  # long contexts fill the card: about the target CTAs or more
        assert n_split * n_head_kv >= ops.DECODE_TARGET_CTAS


def test_causal_mask_with_window():
    m = ops.causal_mask(torch.arange(3, 6), 6, window=2)
    allowed = m == 0
    assert allowed.tolist() == [[False, False, True, True, False, False],
                                [False, False, False, True, True, False],
                                [False, False, False, False, True, True]]
    assert torch.isinf(m[~allowed]).all()


def test_mask_policy_skip_and_sizes():
    assert MaskPolicy("skip", 16, 0, device="cpu").for_forward(3, 2) is None
    assert MaskPolicy.bytes_needed("device", 4096) == 4096 * 4096 * 4
    assert MaskPolicy.bytes_needed("upload", 4096) == 0


@pytest.mark.parametrize("options, blocked", [
    (RuntimeOptions(), None), (RuntimeOptions(mask="device"), None),
    (RuntimeOptions(inject="block-dim"), None),
    (RuntimeOptions(mask="upload"), "mask=upload"), (RuntimeOptions(scalar_upload=True), "scalar-upload"),
    (RuntimeOptions(sync_every_op=True), "sync-every-op")])
def test_graph_blockers(options, blocked):
    reason = graph_blocker(options)
    assert (reason is None) if blocked is None else reason.startswith(blocked)
