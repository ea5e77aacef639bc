"""Bench parameters: comma lists, bad values, test naming and the model-major run order."""

from __future__ import annotations

import pytest

from qprof.bench.params import (
    BenchParams,
    BenchTest,
    parse_bool_list,
    parse_inject,
    parse_int_list,
    parse_mask,
    parse_pg,
)
from qprof.errors import QprofError


def test_int_lists_parse_and_deduplicate():
    assert parse_int_list("512", "-p") == [512]
    assert parse_int_list(" 128, 512,128 ,", "-p") == [128, 512]
    assert parse_int_list("0,64", "-n") == [0, 64]


@pytest.mark.parametrize("text, words", [("12x", "'12x' is not an integer"), ("-5", "below the minimum 0"),
                                         ("", "needs at least one value")])
def test_bad_int_lists_name_the_option_and_value(text, words):
    with pytest.raises(QprofError, match="-p") as exc:
        parse_int_list(text, "-p")
    assert words in str(exc.value)


def test_bool_lists():
    assert parse_bool_list("0,1", "--graphs") == [False, True]
    assert parse_bool_list("true,off", "--nvtx") == [True, False]
    with pytest.raises(QprofError, match=r"--graphs: 'maybe' is not 0 or 1"):
        parse_bool_list("maybe", "--graphs")


def test_mask_and_inject_choices():
    assert parse_mask("upload,device,skip") == ["upload", "device", "skip"]
    assert parse_inject("none,block-dim") == [None, "block-dim"]
    with pytest.raises(QprofError, match=r"--mask: unknown value 'gpu'; choose from upload, device, skip"):
        parse_mask("gpu")
    with pytest.raises(QprofError, match=r"--inject: unknown value 'bogus'"):
        parse_inject("bogus")


def test_pg_pairs():
    assert parse_pg(["512,128", "64,64"]) == [(512, 128), (64, 64)]
    for bad in ("512", "512,0", "a,b", "1,2,3"):
        with pytest.raises(QprofError, match="-pg"):
            parse_pg([bad])


def test_test_names_follow_llama_bench():
    assert BenchTest(512, 0).name == "pp512" and BenchTest(512, 0).kind == "pp"
    assert BenchTest(0, 128).name == "tg128" and BenchTest(0, 128).kind == "tg"
    assert BenchTest(512, 128).name == "pp512+tg128" and BenchTest(512, 128).n_tokens == 640


def test_tests_order_and_zero_skipping():
    p = BenchParams(models=["m"], n_prompt=[0, 64, 16], n_gen=[0, 8], pg=[(16, 4)])
    assert [t.name for t in p.tests()] == ["pp64", "pp16", "tg8", "pp16+tg4"]


def test_nothing_to_run_is_an_error():
    with pytest.raises(QprofError, match="nothing to run"):
        BenchParams(models=["m"], n_prompt=[0], n_gen=[0])
    with pytest.raises(QprofError, match="at least 1"):
        BenchParams(models=["m"], repetitions=0)
    with pytest.raises(QprofError, match="no model given"):
        BenchParams(models=[])


def test_cartesian_product_is_model_major():
    p = BenchParams(models=["a", "b"], n_prompt=[8], n_gen=[4], mask=["upload", "skip"], cuda_graphs=[False, True])
    groups = p.groups()
    assert len(groups) == 2 * 2 * 2
    models = [g.model for g in groups]
    # each model's groups are contiguous, so it is loaded once
    assert models == ["a"] * 4 + ["b"] * 4
    assert [(g.options.mask, g.options.cuda_graphs) for g in groups[:4]] == [
        ("upload", False), ("upload", True), ("skip", False), ("skip", True)]
    assert p.n_rows() == 8 * 2


def test_context_size_default_and_check():
    p = BenchParams(models=["m"], n_prompt=[300], n_gen=[16], pg=[(100, 50)])
    assert p.needed_ctx() == 300
    assert p.ctx_sizes() == [512]  # rounded up to whole 256-token blocks
    assert BenchParams(models=["m"], n_prompt=[512], n_gen=[128], n_ctx=[1024]).ctx_sizes() == [1024]
    with pytest.raises(QprofError, match=r"--ctx 100 is too small: the longest test needs 512"):
        BenchParams(models=["m"], n_prompt=[512], n_ctx=[100]).ctx_sizes()


def test_varying_lists_only_non_default_switches():
    assert BenchParams(models=["m"]).varying() == []
    p = BenchParams(models=["m"], mask=["upload", "skip"], sync_every_op=[True], nvtx=[False])
    assert p.varying() == ["mask", "sync_every_op"]


def test_option_sets_build_runtime_options():
    p = BenchParams(models=["m"], scalar_upload=[True], inject=[None, "block-dim"], nvtx=[True])
    sets = p.option_sets()
    assert [o.inject for o in sets] == [None, "block-dim"]
    assert all(o.scalar_upload and o.nvtx for o in sets)


def test_faults_runs_each_switch_alone_beside_clean():
    p = BenchParams(models=["m"], faults=True, cuda_graphs=[False, True])
    labels = [o.label() for o in p.option_sets()]
    assert labels == ["clean", "mask=upload", "scalar-upload", "sync-every-op", "inject=block-dim"] * 2
    assert [o.cuda_graphs for o in p.option_sets()] == [False] * 5 + [True] * 5
    assert p.varying() == ["options", "cuda_graphs"]
    with pytest.raises(QprofError, match="--faults runs each fault switch itself"):
        BenchParams(models=["m"], faults=True, mask=["upload"])


def test_graphs_default_on_the_gpu_but_not_under_faults_or_on_the_cpu():
    from qprof.bench.params import default_graphs

    assert default_graphs("cuda", faults=False) == ([True], True)
    assert default_graphs("cuda", faults=True) == ([False], False)
    assert default_graphs("cpu", faults=False) == ([False], False)


def test_auto_graphs_turn_off_only_where_the_step_cannot_be_captured():
    p = BenchParams(models=["m"], mask=["upload", "device", "skip"], sync_every_op=[False, True],
                    cuda_graphs=[True], graphs_auto=True)
    got = [(o.mask, o.sync_every_op, o.cuda_graphs) for o in p.option_sets()]
    assert got == [("upload", False, False), ("upload", True, False), ("device", False, True),
                   ("device", True, False), ("skip", False, True), ("skip", True, False)]
    assert p.varying() == ["mask", "sync_every_op", "cuda_graphs"]  # mixed: the table shows what ran
    assert BenchParams(models=["m"], cuda_graphs=[True], graphs_auto=True).varying() == []
    inject = BenchParams(models=["m"], inject=["block-dim"], cuda_graphs=[True], graphs_auto=True)
    assert [o.cuda_graphs for o in inject.option_sets()] == [True]  # a wrong block size still captures


def test_explicit_graphs_are_kept_even_where_capture_will_fall_back():
    p = BenchParams(models=["m"], mask=["upload"], cuda_graphs=[True])
    assert [o.cuda_graphs for o in p.option_sets()] == [True]  # the runtime warns; the row records eager


def test_kv_type_and_fused_multiply_the_option_sets():
    from qprof.bench.params import BenchParams, parse_kv_types

    p = BenchParams(models=["m"], n_prompt=[0], n_gen=[4], kv_type=parse_kv_types("f32,f16"), fused=[True, False])
    sets = p.option_sets()
    assert sorted((o.kv_type, o.fused) for o in sets) == [("f16", False), ("f16", True), ("f32", False), ("f32", True)]
    assert {"kv_type", "fused"} <= set(p.varying())
    with pytest.raises(QprofError, match="--kv-type: unknown value 'f8'; choose from f32, f16"):
        parse_kv_types("f32,f8")


def test_kv_type_and_fused_reach_the_rows_and_the_label():
    from qprof.bench.record import options_fields
    from qprof.runtime.options import RuntimeOptions

    fields = options_fields(RuntimeOptions(kv_type="f16", fused=False, cuda_graphs=True, nvtx=False))
    assert (fields["kv_type"], fields["fused"]) == ("f16", False)
    assert fields["options"] == "graphs,kv=f16,unfused"
    with pytest.raises(QprofError, match="unknown KV cache type 'f8'"):
        RuntimeOptions(kv_type="f8")


def test_pdl_multiplies_the_option_sets_and_reaches_the_rows():
    from click.testing import CliRunner

    from qprof.bench.params import BenchParams
    from qprof.bench.record import options_fields
    from qprof.cli import main
    from qprof.commands.bench import build_params
    from qprof.runtime.options import RuntimeOptions

    p = BenchParams(models=["m"], n_prompt=[0], n_gen=[4], pdl=[True, False])
    assert sorted(o.pdl for o in p.option_sets()) == [False, True] and "pdl" in p.varying()
    p = build_params(("m",), "0", "4", (), 1, False, "skip", "0", "0", "none", None, "0", None, "cpu", pdl="1")
    assert [o.pdl for o in p.option_sets()] == [True]
    fields = options_fields(RuntimeOptions(pdl=True, nvtx=False))
    assert fields["pdl"] is True and fields["options"] == "pdl"
    assert options_fields(RuntimeOptions())["pdl"] is False
    bad = CliRunner().invoke(main, ["bench", "--pdl", "2", "--no-save"])
    assert bad.exit_code == 2 and "--pdl" in bad.output


def test_prefill_graphs_multiply_the_option_sets_only_where_cuda_graphs_run():
    from click.testing import CliRunner

    from qprof.bench.record import options_fields
    from qprof.cli import main
    from qprof.commands.bench import build_params
    from qprof.runtime.options import RuntimeOptions

    p = BenchParams(models=["m"], cuda_graphs=[True], prefill_graphs=[True, False])
    assert sorted(o.prefill_graphs for o in p.option_sets()) == [False, True] and "prefill_graphs" in p.varying()
    eager = BenchParams(models=["m"], cuda_graphs=[False], prefill_graphs=[True, False])
    assert [o.prefill_graphs for o in eager.option_sets()] == [False]  # one eager configuration, not two
    auto = BenchParams(models=["m"], mask=["upload", "skip"], cuda_graphs=[True], graphs_auto=True)
    assert [(o.mask, o.cuda_graphs, o.prefill_graphs) for o in auto.option_sets()] == [
        ("upload", False, False), ("skip", True, True)]
    assert BenchParams(models=["m"], cuda_graphs=[True], graphs_auto=True).varying() == []  # the default: no column
    p = build_params(("m",), "512", "0", (), 1, False, "skip", "0", "0", "none", None, "0", None, "cuda",
                     prefill_graphs="0")
    assert [(o.cuda_graphs, o.prefill_graphs) for o in p.option_sets()] == [(True, False)]
    fields = options_fields(RuntimeOptions(cuda_graphs=True, prefill_graphs=True, nvtx=False))
    assert fields["prefill_graphs"] is True and fields["options"] == "graphs"
    bad = CliRunner().invoke(main, ["bench", "--prefill-graphs", "2", "--no-save"])
    assert bad.exit_code == 2 and "--prefill-graphs" in bad.output
