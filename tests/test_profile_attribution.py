"""Attribution (where the time went) and diagnosis (why), over synthetic runs with and without faults."""

from __future__ import annotations

import pandas as pd
import pytest
from fixtures.synthetic import OPS, WEIGHT_BYTES, op_bytes, simulate, write_nsys_sqlite

from qprof.analysis import attribution as attr
from qprof.analysis.activity import fill_kernel_bytes, make_table, restrict_to_run
from qprof.analysis.diagnosis import diagnose, faults
from qprof.analysis.nsys_sqlite import read_nsys_sqlite


def _table(tmp_path, **faults_on) -> pd.DataFrame:
    sim = simulate(**faults_on)
    df = restrict_to_run(read_nsys_sqlite(write_nsys_sqlite(sim, tmp_path / "run.sqlite")))
    return fill_kernel_bytes(df, op_bytes())


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("clean"))


def test_categories_and_gaps_cover_the_window(clean):
    for phase in ("prefill", "decode", None):
        t = attr.time_by_category(clean, phase)
        # one stream: work and gaps tile the window exactly
        assert t["time_ns"].sum() == attr.window_ns(clean, phase)
        assert abs(t["share"].sum() - 1.0) < 1e-9
    dec = attr.time_by_category(clean, "decode").set_index("category")
    n_steps, n_layers = 4, 2
    q4k_ns = sum(ns for _, _, q, _, ns in OPS if q == "Q4_K")
    assert dec.loc["matvec Q4_K", "time_ns"] == q4k_ns * n_steps * n_layers
    assert dec.loc["copy DtoH", "count"] == n_steps - 1  # the last step's sample falls after the decode window
    assert "sync wait" in dec.index  # the GPU idles while the host reads back each sampled id


def test_gap_classes(clean):
    g = attr.gaps(clean, "decode")
    assert set(g["gap"]) <= set(attr.GAP_CATEGORIES)
    long = g[g["gap"] == "idle gap"]
    assert (long["dur_ns"] >= attr.LAUNCH_GAP_MAX_NS).all()
    short = g[g["gap"] == "launch gap"]
    assert (short["dur_ns"] < attr.LAUNCH_GAP_MAX_NS).all()
    # a gap is a sync wait only where a synchronize returned inside it
    syncs = clean[clean["kind"] == "sync"]
    for _, row in g[g["gap"] == "sync wait"].iterrows():
        assert ((syncs["end_ns"] >= row["start_ns"]) & (syncs["end_ns"] <= row["end_ns"])).any()


def test_by_family_and_qtype(clean):
    fam = attr.time_by_category(clean, "decode", by="family").set_index("category")
    assert "matvec" in fam.index and "matvec Q4_K" not in fam.index
    qt = attr.time_by_category(clean, "decode", by="qtype").set_index("category")
    assert {"Q4_K kernels", "Q6_K kernels", "unquantized/other kernels"} <= set(qt.index)


def test_by_range_merges_layers_and_counts_calls(clean):
    ops = attr.by_range(clean, "decode").set_index("op")
    assert ops.loc["ffn_down", "calls"] == 4 * 2  # steps x layers
    assert ops.loc["ffn_down", "mean_ns"] == 40_000
    assert ops.loc["attn_v", "qtype"] == "Q6_K" and ops.loc["attention", "family"] == "attention"
    assert abs(ops["share"].sum() - 1.0) < 1e-9
    per_layer = attr.by_range(clean, "decode", merge_layers=False)
    assert {"blk.0.ffn_down", "blk.1.ffn_down"} <= set(per_layer["op"])
    assert attr.op_type("token 12") == "(decode step, outside ops)" and attr.op_type(None) == "(outside ranges)"


def test_per_token(tmp_path):
    df = _table(tmp_path, sync_every_op=True)
    tok = attr.per_token(df)
    dec = tok[tok["phase"] == "decode"]
    assert list(dec["token"]) == [8, 9, 10, 11]
    assert (dec["kernels"] == len(OPS) * 2).all()
    assert (dec["syncs"] == len(OPS) * 2).all()  # one per op, the sampling sync sits outside the step
    assert tok.iloc[0]["phase"] == "prefill"


def test_copies_and_top_kernels(tmp_path):
    df = _table(tmp_path, mask_upload=True)
    c = attr.copies(df).set_index("copy_kind")
    assert c.loc["DtoH", "count"] == 5 and c.loc["DtoH", "bytes"] == 20
    htod = df[(df["kind"] == "memcpy") & (df["copy_kind"] == "HtoD")]
    assert c.loc["HtoD", "bytes"] == htod["bytes"].sum()
    assert c.loc["HtoD", "bandwidth_Bps"] == pytest.approx(htod["bytes"].sum() / (htod["dur_ns"].sum() * 1e-9))
    assert attr.top_kernels(df, n=3, phase="decode")["pct_of_peak"].isna().all()  # no peak known, no % of it
    top = attr.top_kernels(df, n=3, peak_Bps=4.2e12, phase="decode").set_index("name")
    q4 = top.loc["matvec_q4_k"]
    expected_bytes = (WEIGHT_BYTES["attn_q"] + WEIGHT_BYTES["ffn_down"]) * 2 * 4
    assert q4["bytes"] == expected_bytes
    assert q4["achieved_Bps"] == pytest.approx(expected_bytes / (q4["time_ns"] * 1e-9))
    assert q4["pct_of_peak"] == pytest.approx(100 * q4["achieved_Bps"] / 4.2e12)


def test_agreement_table():
    def ops(scale):
        return make_table([
            {"kind": "op", "name": f"blk.{i}.{op}", "family": "matvec", "start_ns": 1000 * k,
             "end_ns": 1000 * k + int(ns * scale), "phase": "decode", "nvtx_range": f"blk.{i}.{op}",
             "nvtx_path": f"run/decode/token 1/blk.{i}/blk.{i}.{op}"}
            for k, (i, op, ns) in enumerate([(0, "attn_q", 400), (1, "attn_q", 400), (0, "ffn_up", 200)])])

    t = attr.agreement({"events": ops(1.0), "nsys": ops(0.9)})
    assert t.loc["attn_q", "events"] == pytest.approx(800 / 1e6)
    assert t.loc["attn_q", "nsys vs events %"] == pytest.approx(-10.0)
    assert t.loc["TOTAL", "nsys vs events %"] == pytest.approx(-10.0)


# --------------------------------------------------------------------------- diagnosis


def test_clean_run_has_no_faults(clean):
    found = diagnose(clean)
    assert faults(found) == []
    assert all(f.severity == "advice" for f in found)


def test_mask_upload_is_named_with_numbers(tmp_path):
    df = _table(tmp_path, mask_upload=True)
    (f,) = faults(diagnose(df))
    assert f.rule == "mask_upload"
    assert f.message.startswith("attention mask uploaded on every step: 4 copies (1 per step, 36–48 B each")
    assert "% of decode time" in f.message and "--mask device" in f.message
    assert f.numbers["copies"] == 4 and 0 < f.numbers["share_of_decode"] < 1


def test_per_layer_scalar_upload(tmp_path):
    df = _table(tmp_path, scalar_upload=True)
    rules = {f.rule: f for f in faults(diagnose(df))}
    assert "per_layer_upload" in rules
    assert "'scalar_upload'" in rules["per_layer_upload"].message
    assert "1 per layer" in rules["per_layer_upload"].message


def test_syncs_that_come_with_uploads_name_the_upload(tmp_path):
    sim = simulate(scalar_upload=True, n_layers=4)
    df = restrict_to_run(read_nsys_sqlite(write_nsys_sqlite(sim, tmp_path / "s.sqlite")))
    rules = {f.rule: f for f in faults(diagnose(df))}
    assert set(rules) == {"per_layer_upload", "per_layer_sync"}
    assert rules["per_layer_sync"].message.startswith("device synchronized 4 times per decode step, 1.0 per layer")
    assert rules["per_layer_sync"].message.endswith("each comes with a host→device copy in the same op: keep that "
                                                    "value on the device")


def test_sync_every_op(tmp_path):
    df = _table(tmp_path, sync_every_op=True)
    (f,) = faults(diagnose(df))
    assert f.rule == "per_layer_sync"
    assert f.message.startswith("device synchronized 10 times per decode step, 5.0 per layer")
    assert f.message.endswith("drop the synchronize (--sync-every-op off)")
    assert f.numbers["sync_wait_ns"] > 0


def test_launch_bound_decode_is_advice():
    # 30 tiny kernels per step with 20 µs launch gaps between them
    rows, t = [], 0
    for step in range(3):
        for k in range(30):
            rows.append({"kind": "kernel", "name": "rmsnorm_f32", "family": "rmsnorm", "start_ns": t,
                         "end_ns": t + 2_000, "phase": "decode", "token": step, "stream": 7})
            t += 22_000
    (f,) = diagnose(make_table(rows))
    assert f.rule == "launch_bound" and f.severity == "advice"
    assert "CUDA graph" in f.message and f.numbers["share_of_decode"] > 0.8


def test_block_dim_rule():
    def launch(block):
        return {"kind": "kernel", "name": "dequant_q6_k_f16", "family": "dequant", "qtype": "Q6_K", "start_ns": 0,
                "end_ns": 10, "block": block, "phase": "prefill"}

    (f,) = diagnose(make_table([launch("32,4,1")]))
    assert f.rule == "block_dim" and f.severity == "fault"
    assert "blockDim.x = 32" in f.message and "64 threads" in f.message and "50%" in f.message
    assert diagnose(make_table([launch("64,4,1")])) == []
