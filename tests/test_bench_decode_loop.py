"""bench's --decode-loop: parsed and checked, tg/pg tests run each loop (pp tests none), the timed calls of each
loop, the warm-up, the rows and tables, and compare / llama.cpp pairing / charts that tell the loops apart."""

from __future__ import annotations

import json

import pytest
from bench_fakes import FakeRuntime, bench_row, fake_model
from click.testing import CliRunner

from qprof.bench.params import BenchParams, BenchTest, parse_decode_loop
from qprof.bench.runner import TokenSource, time_test, warm_up
from qprof.cli import main
from qprof.errors import QprofError


def bench(*args: str):
    return CliRunner().invoke(main, ["bench", *args])


class ChainingRuntime(FakeRuntime):
    """FakeRuntime with a runtime's own in-flight loop: bench must hand it the whole decode."""

    def decode_greedy(self, first_token: int, n: int):
        self.calls.append(("decode_greedy", first_token, n))
        self.n_past += n
        return iter(range(n))


def test_the_flag_parses_as_a_comma_list_and_rejects_other_words():
    assert parse_decode_loop("in-flight") == ["in-flight"]
    assert parse_decode_loop("synced, in-flight,synced") == ["synced", "in-flight"]
    with pytest.raises(QprofError, match="--decode-loop: unknown value 'async'; choose from in-flight, synced"):
        parse_decode_loop("in-flight,async")
    with pytest.raises(QprofError, match="--decode-loop needs at least one of: in-flight, synced"):
        parse_decode_loop(" , ")


@pytest.mark.parametrize("value, message", [
    ("async", "--decode-loop: unknown value 'async'; choose from in-flight, synced"),
    ("", "--decode-loop needs at least one of: in-flight, synced"),
])
def test_a_bad_value_is_one_line_and_exit_2(value, message):
    res = bench("--device", "cpu", "--no-save", "--decode-loop", value)
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1] == f"qprof: error: {message}"


def test_tests_that_generate_run_once_per_loop_and_pp_tests_once():
    p = BenchParams(models=["m"], n_prompt=[8], n_gen=[4], pg=[(8, 2)], decode_loop=["in-flight", "synced"])
    assert [(t.name, t.loop) for t in p.tests()] == [
        ("pp8", None), ("tg4", "in-flight"), ("tg4", "synced"), ("pp8+tg2", "in-flight"), ("pp8+tg2", "synced")]
    assert BenchParams(models=["m"]).decode_loop == ["in-flight"]  # the default
    assert "decode_loop" not in BenchParams(models=["m"]).varying()
    assert "decode_loop" in BenchParams(models=["m"], decode_loop=["synced"]).varying()
    assert "decode_loop" in p.varying()
    # nothing decodes: no loop column even when a loop was named
    assert "decode_loop" not in BenchParams(models=["m"], n_gen=[0], decode_loop=["synced"]).varying()


def test_in_flight_tg_is_one_chained_loop_between_two_syncs_on_a_runtime_that_chains():
    rt = ChainingRuntime(fake_model(), n_ctx=64)
    time_test(rt, BenchTest(0, 5, "in-flight"), TokenSource(fake_model()))
    assert rt.calls == [("reset",), ("sync",), ("decode_greedy", 1, 5), ("sync",)]
    rt = ChainingRuntime(fake_model(), n_ctx=64)
    time_test(rt, BenchTest(8, 3, "in-flight"), TokenSource(fake_model()))
    kinds = [c[0] for c in rt.calls]
    assert kinds == ["reset", "sync", "prefill", "decode_greedy", "sync"] and rt.calls[3][2] == 3
    assert rt.n_past == 11


def test_in_flight_tg_on_the_generic_loop_decodes_each_greedy_token_without_a_sync_between():
    rt = FakeRuntime(fake_model(), n_ctx=64)  # its sample() always picks 0
    time_test(rt, BenchTest(0, 5, "in-flight"), TokenSource(fake_model()))
    assert rt.calls == [("reset",), ("sync",), ("decode", 1), ("decode", 0), ("decode", 0), ("decode", 0),
                        ("decode", 0), ("sync",)]
    assert rt.n_past == 5


def test_synced_tg_is_llama_benchs_loop_exactly():
    rt = ChainingRuntime(fake_model(), n_ctx=64)
    time_test(rt, BenchTest(0, 5, "synced"), TokenSource(fake_model()))
    kinds = [c[0] for c in rt.calls]
    assert kinds == ["reset", "sync"] + ["decode", "sync"] * 5 + ["sync"]
    decoded = [c[1] for c in rt.calls if c[0] == "decode"]
    assert decoded[0] == 1 and len(set(decoded)) > 1  # BOS, then random ids


def test_both_loops_draw_the_same_random_stream():
    a, b = TokenSource(fake_model(), seed=3), TokenSource(fake_model(), seed=3)
    time_test(FakeRuntime(fake_model(), n_ctx=64), BenchTest(0, 6, "in-flight"), a)
    time_test(FakeRuntime(fake_model(), n_ctx=64), BenchTest(0, 6, "synced"), b)
    assert a.tokens(4) == b.tokens(4)  # a later test's prompt does not depend on the loop before it


def test_warm_up_exercises_the_chosen_loop():
    rt = ChainingRuntime(fake_model(), n_ctx=64)
    warm_up(rt, BenchTest(8, 100, "in-flight"), TokenSource(fake_model()))
    assert [c[0] for c in rt.calls if c[0] != "sync"] == ["reset", "prefill", "decode_greedy"]
    assert rt.calls[-2][2] == 2  # the first step and a chained one
    rt = ChainingRuntime(fake_model(), n_ctx=64)
    warm_up(rt, BenchTest(0, 1, "in-flight"), TokenSource(fake_model()))
    assert ("decode_greedy", 1, 1) in rt.calls  # never more steps than the test has
    rt = ChainingRuntime(fake_model(), n_ctx=64)
    warm_up(rt, BenchTest(8, 100, "synced"), TokenSource(fake_model()))
    assert [c[0] for c in rt.calls if c[0] != "sync"] == ["reset", "prefill", "decode"]


def test_rows_record_the_loop_and_the_table_shows_it_when_it_is_not_the_default():
    res = bench("--device", "cpu", "-m", "tiny-q4_k_m", "-p", "4", "-n", "2", "-r", "1", "--no-warmup",
                "--decode-loop", "in-flight,synced", "-o", "jsonl", "--no-save")
    assert res.exit_code == 0, res.output + str(res.exception)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["test"], r["decode_loop"], r["options"]) for r in rows] == [
        ("pp4", None, "clean"), ("tg2", "in-flight", "in-flight"), ("tg2", "synced", "clean")]
    assert ("decode loop: in-flight (greedy tokens chained on the device, the next step queued while the host "
            "reads each token), synced (random tokens, a synchronize after every one: llama-bench's loop); the CPU "
            "runtime has no device to queue on: its in-flight loop decodes and samples greedily one step after the "
            "other") in res.stderr
    md = bench("--device", "cpu", "-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--no-warmup",
               "--decode-loop", "synced", "--no-save")
    assert md.exit_code == 0, md.output
    assert "no device to queue on" not in md.stderr  # synced only: nothing falls back
    lines = md.stdout.splitlines()
    assert "| loop      |" in lines[0] and "| synced    |" in lines[2]
    default = bench("--device", "cpu", "-m", "tiny-q4_k_m", "-p", "0", "-n", "2", "-r", "1", "--no-warmup",
                    "--no-save")
    assert default.exit_code == 0 and "| loop" not in default.stdout.splitlines()[0]
    assert "decode loop: in-flight (" in default.stderr and "--decode-loop synced for llama-bench's loop" \
        in default.stderr
    pp_only = bench("--device", "cpu", "-m", "tiny-q4_k_m", "-p", "4", "-n", "0", "-r", "1", "--no-save")
    assert pp_only.exit_code == 0 and "decode loop" not in pp_only.stderr


def test_csv_and_sql_carry_the_field():
    from qprof.bench.formats import make_printer

    row = bench_row(decode_loop="in-flight")
    csv = make_printer("csv")
    assert "decode_loop" in csv.header().split(",") and ",in-flight," in csv.row(row)
    assert "decode_loop TEXT" in make_printer("sql").header() and "'in-flight'" in make_printer("sql").row(row)


def test_compare_tells_the_loops_apart_and_takes_old_rows_as_synced():
    from qprof.bench.compare import compare_rows, config_key

    old = bench_row(avg_ts=100.0)  # written before the field: decoded synced
    synced = bench_row(avg_ts=101.0, decode_loop="synced")
    in_flight = bench_row(avg_ts=110.0, decode_loop="in-flight", options="in-flight")
    assert config_key(old) == config_key(synced) != config_key(in_flight)
    pp = bench_row(test="pp512", n_prompt=512, n_gen=0)
    assert config_key(pp) == config_key({**pp, "decode_loop": None})
    changes, only_a, only_b = compare_rows([old], [synced, in_flight])
    assert [c.b_ts for c in changes] == [101.0] and (only_a, only_b) == (0, 1)


def test_llama_bench_rows_are_synced_and_pair_with_qprofs_synced_row_first():
    from qprof.bench.peers import LOOP_NOTE, pair_rows, paired_in_flight, peer_row

    rec = {"model_filename": "/c/m.gguf", "n_prompt": 0, "n_gen": 128, "avg_ts": 300.0, "stddev_ts": 1.0,
           "backends": "CUDA", "gpu_info": "NVIDIA H200", "flash_attn": True, "samples_ns": [1, 2]}
    peer = peer_row(rec, "mistral-7b-q4_k_m", "test")
    assert peer["decode_loop"] == "synced"
    assert peer_row({**rec, "n_prompt": 512, "n_gen": 0}, "m", "test")["decode_loop"] is None
    base = {"model": "mistral-7b-q4_k_m", "gpu_name": "NVIDIA H200", "test": "tg128", "cuda_graphs": True}
    synced = bench_row(**base, avg_ts=450.0, decode_loop="synced", options="graphs")
    in_flight = bench_row(**base, avg_ts=480.0, decode_loop="in-flight", options="graphs,in-flight")
    (pair,) = pair_rows([synced, in_flight, peer])
    assert pair.qprof["avg_ts"] == 450.0 and not paired_in_flight([pair])  # like with like
    (pair,) = pair_rows([in_flight, peer])
    assert pair.qprof["avg_ts"] == 480.0 and paired_in_flight([pair])  # the only clean row: said so
    assert "llama-bench synchronizes after every generated token" in LOOP_NOTE


def test_compare_peers_says_when_a_ratio_is_against_an_in_flight_row(tmp_path):
    from qprof.bench.peers import peer_row
    from qprof.bench.results import append_row

    rec = {"model_filename": "/c/m.gguf", "n_prompt": 0, "n_gen": 128, "avg_ts": 300.0, "stddev_ts": 1.0,
           "backends": "CUDA", "gpu_info": "NVIDIA H200", "flash_attn": True, "samples_ns": [1, 2]}
    path = tmp_path / "r.jsonl"
    append_row(path, bench_row(model="mistral-7b-q4_k_m", gpu_name="NVIDIA H200", cuda_graphs=True, avg_ts=480.0,
                               decode_loop="in-flight", options="graphs,in-flight"))
    append_row(path, peer_row(rec, "mistral-7b-q4_k_m", "test"))
    res = CliRunner().invoke(main, ["compare", "--peers", str(path)])
    assert res.exit_code == 0, res.output
    assert "graphs,in-flight" in res.stdout and "1.60x" in res.stdout
    assert "qprof compare: llama-bench synchronizes after every generated token" in res.stderr


def test_charts_keep_each_loop_as_its_own_bar(tmp_path):
    from qprof.bench import charts
    from qprof.bench.results import append_row

    path = tmp_path / "b.jsonl"
    append_row(path, bench_row(avg_ts=100.0, cuda_graphs=True, options="graphs"))  # an old row: synced
    append_row(path, bench_row(avg_ts=110.0, cuda_graphs=True, options="graphs,in-flight", decode_loop="in-flight"))
    append_row(path, bench_row(test="pp512", n_prompt=512, n_gen=0, avg_ts=4000.0, cuda_graphs=True,
                               options="graphs", floor_ts=None, pct_of_floor=None))
    append_row(path, bench_row(avg_ts=40.0, mask="upload", options="mask=upload,in-flight", decode_loop="in-flight"))
    append_row(path, bench_row(avg_ts=50.0, options="in-flight", decode_loop="in-flight"))
    df = charts.load_bench(tmp_path)
    quant = charts.tokens_by_quant(df)
    assert quant.fig is not None
    assert sorted(quant.table.loc[quant.table["test"] == "tg128", "decode"]) == [
        "CUDA-graph decode", "CUDA-graph decode, in flight", "eager decode, in flight"]
    versus = charts.prompt_vs_decode(df)
    assert versus.fig is not None and {"pp512", "tg128", "tg128 in flight"} <= set(versus.table.columns)
    (pair,) = charts.fault_pairs(df).itertuples()  # the in-flight fault row meets the in-flight clean row
    assert (pair.on_ts, pair.off_ts) == (40.0, 50.0) and pair.label.endswith(" in flight")
    assert charts.tokens_by_mode(df).fig is not None and charts.pct_of_floor(df).fig is not None
