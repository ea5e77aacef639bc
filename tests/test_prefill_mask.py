"""ops.prefill_mask: the causal mask a prefill chunk needs without a given one (CPU: plain torch)."""

import torch

from qprof.runtime.cuda import ops


def test_a_chunk_from_position_0_without_a_cutting_window_needs_no_mask():
    shape = ops.AttentionShape(4, 2, 32, 0)
    assert ops.prefill_mask(0, 9, shape, "cpu") is None
    assert ops.prefill_mask(0, 9, ops.AttentionShape(4, 2, 32, 9), "cpu") is None  # the window holds every key


def test_a_later_chunk_or_a_cutting_window_gets_the_causal_rows_of_its_queries():
    for pos0, n_q, window in ((5, 3, 0), (0, 6, 4), (7, 4, 3)):
        mask = ops.prefill_mask(pos0, n_q, ops.AttentionShape(4, 2, 32, window), "cpu")
        assert mask is not None and not mask.row_by_pos and tuple(mask.values.shape) == (n_q, pos0 + n_q)
        for r in range(n_q):
            for key in range(pos0 + n_q):
                p = pos0 + r
                visible = key <= p and (window <= 0 or p - key < window)
                assert mask.values[r, key].item() == (0.0 if visible else float("-inf")), (pos0, n_q, window, r, key)
    assert torch.equal(ops.prefill_mask(5, 3, ops.AttentionShape(4, 2, 32, 0), "cpu").values,
                       ops.causal_mask(torch.arange(5, 8), 8, 0))
