"""`qprof compare`: matching configs, % change, the noise test, selection by commit, and its CLI."""

from __future__ import annotations

import json

import pytest
from bench_fakes import bench_row
from click.testing import CliRunner

from qprof.bench.compare import compare_rows, config_key, render, select
from qprof.bench.results import append_row
from qprof.cli import main
from qprof.errors import QprofError


def write(path, rows):
    for r in rows:
        append_row(path, r)
    return str(path)


def test_change_and_noise_test():
    a = [bench_row(test="tg128", avg_ts=100.0, stddev_ts=3.0), bench_row(test="pp512", n_prompt=512, n_gen=0,
                                                                          avg_ts=1000.0, stddev_ts=5.0)]
    b = [bench_row(test="tg128", avg_ts=104.0, stddev_ts=4.0), bench_row(test="pp512", n_prompt=512, n_gen=0,
                                                                          avg_ts=900.0, stddev_ts=5.0)]
    changes, only_a, only_b = compare_rows(a, b)
    assert (only_a, only_b) == (0, 0)
    tg, pp = changes
    assert tg.change_pct == pytest.approx(4.0) and tg.spread_pct == pytest.approx(5.0)  # hypot(3, 4) = 5
    assert not tg.significant and tg.verdict == "within noise"
    assert pp.change_pct == pytest.approx(-10.0) and pp.significant and pp.verdict == "SLOWER"


def test_configs_match_on_model_test_and_switches_not_on_card_or_path():
    a = bench_row(model_filename="/gpu/cache/m.gguf", gpu_name="A", build_commit="1")
    b = bench_row(model_filename="/other/m.gguf", gpu_name="B", build_commit="2")
    assert config_key(a) == config_key(b)
    assert config_key(a) != config_key(bench_row(mask="upload"))
    assert config_key(a) != config_key(bench_row(n_gen=64))
    # CPU rows of different thread counts are different experiments; GPU rows are not told apart by it
    assert config_key(bench_row(device="cpu", n_threads=1)) != config_key(bench_row(device="cpu", n_threads=2))
    assert config_key(bench_row(n_threads=1)) == config_key(bench_row(n_threads=16))
    changes, only_a, only_b = compare_rows([a, bench_row(mask="upload")], [b, bench_row(cuda_graphs=True)])
    assert len(changes) == 1 and (only_a, only_b) == (1, 1)


def test_latest_row_of_a_config_wins():
    a = [bench_row(avg_ts=50.0), bench_row(avg_ts=100.0)]
    (c,), _, _ = compare_rows(a, [bench_row(avg_ts=100.0)])
    assert c.a_ts == 100.0 and c.change_pct == 0.0


def test_select_by_commit(tmp_path):
    path = write(tmp_path / "r.jsonl", [bench_row(build_commit="aaaa1111", avg_ts=1.0),
                                        bench_row(build_commit="bbbb2222", avg_ts=2.0)])
    rows, _ = select(f"{path}@bbbb")
    assert [r["avg_ts"] for r in rows] == [2.0]
    with pytest.raises(QprofError, match="no rows with build_commit 'cccc'"):
        select(f"{path}@cccc")


def test_render_formats():
    changes, _, _ = compare_rows([bench_row(avg_ts=100.0)], [bench_row(avg_ts=120.0, stddev_ts=0.0)])
    md = render(changes, "md", "A.jsonl", "B.jsonl")
    assert "| mistral-7b-q4_k_m.gguf | tg128 | clean | cuda | 100.00 ± 1.50 | 120.00 ± 0.00 | +20.0% |" in md
    assert md.splitlines()[-1].endswith("| faster |")
    assert json.loads(render(changes, "json", "A", "B"))[0]["verdict"] == "faster"
    assert render(changes, "csv", "A", "B").splitlines()[0].startswith("model,test,options,device,a_ts")


def test_cli_table_summary_and_fail_on_regression(tmp_path):
    a = write(tmp_path / "a.jsonl", [bench_row(avg_ts=100.0, stddev_ts=1.0)])
    b = write(tmp_path / "b.jsonl", [bench_row(avg_ts=80.0, stddev_ts=1.0)])
    res = CliRunner().invoke(main, ["compare", a, b])
    assert res.exit_code == 0, res.output
    assert "-20.0%" in res.stdout and "SLOWER" in res.stdout
    assert "1 compared: 0 faster, 1 slower, 0 within noise" in res.stderr
    res = CliRunner().invoke(main, ["compare", a, b, "--fail-on-regression"])
    assert res.exit_code == 1
    res = CliRunner().invoke(main, ["compare", b, a, "--fail-on-regression", "-o", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["verdict"] == "faster"


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    a = write(tmp_path / "a.jsonl", [bench_row()])
    b = write(tmp_path / "b.jsonl", [bench_row(n_gen=64, test="tg64")])
    res = CliRunner().invoke(main, ["compare", a, str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and res.stderr.startswith("qprof: error: no results at") and res.stderr.count("\n") == 1
    res = CliRunner().invoke(main, ["compare", a, b])
    assert res.exit_code == 2 and "no config appears in both" in res.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"hello": 1}\nnot json\n')
    res = CliRunner().invoke(main, ["compare", a, str(junk)])
    assert res.exit_code == 2 and "no bench rows (with avg_ts)" in res.stderr


def h200_peers():
    from qprof.bench.llama_bench import read_json
    from qprof.bench.peers import peer_row

    path = __import__("pathlib").Path(__file__).parent / "fixtures" / "llama_bench_h200_synth7b.json"
    return [peer_row(r, "mistral-7b-q4_k_m", "llama-bench JSON") for r in read_json(path)]


def test_peer_rows_are_compared_only_with_peer_rows():
    peers = h200_peers()
    qprof = bench_row(model_filename="/root/synth7b.gguf", gpu_name="NVIDIA H200", avg_ts=200.0)
    assert config_key(peers[3]) != config_key(qprof) and config_key(peers[3]) != config_key(peers[1])  # fa=1, fa=0
    changes, only_a, only_b = compare_rows([qprof, *peers], [dict(p, avg_ts=p["avg_ts"] * 1.1) for p in peers])
    assert [c.options for c in changes] == ["llama.cpp fa=0"] * 2 + ["llama.cpp fa=1"] * 2
    assert all(c.change_pct == pytest.approx(10.0) for c in changes) and (only_a, only_b) == (1, 0)


def test_cli_peers_sets_each_llama_cpp_row_beside_the_clean_qprof_row(tmp_path):
    peers = write(tmp_path / "peers.jsonl", h200_peers())
    base = {"model": "mistral-7b-q4_k_m", "gpu_name": "NVIDIA H200"}
    ours = write(tmp_path / "ours.jsonl", [bench_row(**base, avg_ts=201.0, stddev_ts=0.5, cuda_graphs=True,
                                                     options="graphs"),
                                           bench_row(**base, avg_ts=50.0, mask="upload", options="mask=upload")])
    res = CliRunner().invoke(main, ["compare", "--peers", ours, peers])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "| model | test | card | qprof t/s | llama.cpp t/s | qprof/llama.cpp |"
    assert ("| mistral-7b-q4_k_m | tg128 | NVIDIA H200 | 201.00 ± 0.50 (graphs) | 292.55 ± 1.01 (fa=1) | 0.69x |"
            in lines)
    assert "| mistral-7b-q4_k_m | pp512 | NVIDIA H200 | - | 9842.67 ± 555.74 (fa=1) | - (no clean qprof row on this " \
           "card) |" in lines
    assert "4 llama.cpp row(s), 2 beside a clean qprof row of the same model, test and card" in res.stderr
    res = CliRunner().invoke(main, ["compare", "--peers", peers, "-o", "json"])
    records = json.loads(res.stdout)
    assert len(records) == 4 and records[3]["peer_ts"] == pytest.approx(292.55495)
    assert records[3]["qprof_over_peer"] is None


def test_cli_peers_and_missing_b_are_one_line_errors(tmp_path):
    a = write(tmp_path / "a.jsonl", [bench_row()])
    res = CliRunner().invoke(main, ["compare", "--peers", a])
    assert res.exit_code == 2 and res.stderr.startswith(f"qprof: error: no llama.cpp rows in {a}")
    res = CliRunner().invoke(main, ["compare", a])
    assert res.exit_code == 2
    assert res.stderr == "qprof: error: compare needs two result sets A and B (or --peers A [B] for qprof vs " \
                         "llama.cpp)\n"
