"""Every click usage error, from any command or subcommand, is one `qprof: error:` line and exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qprof.cli import main


@pytest.mark.parametrize("args, needles", [
    (["bench", "-o", "xml"], ["bench: Invalid value for '-o' / '--output': 'xml' is not one of", "'qprof bench -h'"]),
    (["bench", "--device", "tpu"], ["bench: Invalid value for '--device': 'tpu'"]),
    (["generate", "-n", "abc"], ["generate: Invalid value for '-n' / '--n-predict': 'abc' is not a valid integer"]),
    (["generate", "extra"], ["generate: Got unexpected extra argument (extra)"]),
    (["profile", "--timing", "perf"], ["profile: Invalid value for '--timing': 'perf'"]),
    (["workloads", "info"], ["workloads info: Missing argument", "'qprof workloads info -h'"]),
    (["workloads", "frob"], ["workloads: No such command 'frob'"]),
    (["nosuch"], ["No such command 'nosuch'", "'qprof -h'"]),
    (["--bogus"], ["No such option '--bogus'"]),
    (["bench", "--bogus"], ["bench: No such option '--bogus'"]),
])
def test_usage_errors_are_one_line_exit_2(args, needles):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qprof: error: "), res.output
    assert "Usage:" not in res.output and "Try '" not in res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args", [[], ["workloads"], ["bench", "-h"], ["--version"]])
def test_help_and_bare_groups_are_not_errors(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "qprof: error" not in res.output
