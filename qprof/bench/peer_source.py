"""Where bench's llama.cpp rows come from: llama-bench run now (--llama-bench PATH) or a saved JSON
(--llama-bench-json FILE); each row is paired with the qprof row it is set beside."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qprof.bench import llama_bench as lb
from qprof.bench.peers import LOOP_NOTE, card, is_peer, make_rows, pair_rows, paired_in_flight
from qprof.errors import QprofError


@dataclass(frozen=True)
class PeerSource:
    binary: Path | None  # llama-bench to run, or None when reading a saved JSON
    saved: list[dict] | None
    saved_path: str | None

    @classmethod
    def from_options(cls, llama_bench: str | None, llama_bench_json: str | None,
                     peer_only: bool) -> PeerSource | None:
        """Checked before anything runs, so a wrong path costs no benchmark time."""
        if llama_bench and llama_bench_json:
            raise QprofError("give --llama-bench PATH or --llama-bench-json FILE, not both")
        if llama_bench:
            return cls(lb.check_binary(llama_bench), None, None)
        if llama_bench_json:
            return cls(None, lb.read_json(llama_bench_json), llama_bench_json)
        if peer_only:
            raise QprofError("--peer-only needs --llama-bench PATH or --llama-bench-json FILE")
        return None

    def models_for(self, params, explicit: bool, log: Callable[[str], None]) -> dict:
        """--peer-only: the -m models, loaded for their files and facts (a saved JSON without -m needs none)."""
        from qprof.bench.runner import load_spec

        if self.saved is not None and not explicit:
            return {}
        return {spec: load_spec(spec, log=log) for spec in params.models}

    def batches(self, params, loaded: dict, log: Callable[[str], None]) -> Iterator[tuple[list[dict], str]]:
        """(llama-bench records, where they came from): the saved file, or one llama-bench run per model."""
        if self.saved is not None:
            yield self.saved, f"llama-bench JSON {self.saved_path}"
            return
        args = lb.LlamaBenchArgs.from_params(params)
        for lm in loaded.values():
            cmd = lb.command(self.binary, Path(lm.path), args)
            log(f"running llama.cpp: {' '.join(cmd)}")
            yield lb.run(self.binary, Path(lm.path), args), f"llama-bench {' '.join(cmd[:1] + cmd[3:])}"

    def rows(self, params, loaded: dict, qprof_rows: list[dict], ceilings, env,
             log: Callable[[str], None]) -> Iterator[dict]:
        """Peer rows, each with its qprof/llama.cpp ratio where a clean qprof row of the same test and card ran."""
        here = card({"gpu_name": env.gpu_name, "cpu_info": env.cpu_info})
        qprof_rows = [r for r in qprof_rows if not is_peer(r)]
        noted = False  # LOOP_NOTE said once a run
        for records, source in self.batches(params, loaded, log):
            rows, notes = make_rows(records, loaded, source, ceilings, here)
            for note in notes:
                log(note)
            elsewhere = sorted({card(r) for r in rows if card(r) != here})
            if qprof_rows and elsewhere:
                log(f"llama.cpp rows from {', '.join(elsewhere)}, qprof's from {here}: no ratio across cards")
            for row in rows:
                (pair,) = pair_rows([*qprof_rows, row])
                row["qprof_ratio"] = pair.ratio
                if not noted and paired_in_flight([pair]):
                    log(LOOP_NOTE)
                    noted = True
                yield row
