"""llama.cpp's rows beside qprof's: peer rows made from llama-bench records, and each paired with the clean
qprof row of the same model, test and card for the qprof/llama.cpp ratio."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qprof.bench.params import BenchTest
from qprof.bench.record import SCHEMA, decode_loop_of, ordered
from qprof.bench.roofline import bound_fields, prefill_flops

PEER = "llama.cpp"
PEER_DECODE_LOOP = "synced"  # llama-bench's tg loop: random tokens, llama_synchronize after every one
LOOP_NOTE = ("llama-bench synchronizes after every generated token (qprof's --decode-loop synced); the "
             "qprof/llama.cpp ratio of a tg or pg test is taken against qprof's synced row where one ran, else its "
             "in-flight row (whose options say in-flight)")
CLEAN = {"mask": "skip", "scalar_upload": False, "sync_every_op": False, "inject": "none", "nvtx": False}


def is_peer(row: dict) -> bool:
    return bool(row.get("peer"))


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    """llama-bench's labels (pp512, tg128, pp512+tg128 as qprof writes pg), '@d<N>' for a test at KV depth N."""
    name = BenchTest(int(n_prompt), int(n_gen)).name
    return f"{name}@d{n_depth}" if n_depth else name


def card(row: dict) -> str:
    """The card a row was measured on: the GPU's name, else 'CPU (<cpu>)'."""
    if row.get("gpu_name"):
        return str(row["gpu_name"])
    return f"CPU ({row.get('cpu_info') or 'unknown'})"


def peer_row(rec: dict, model: str, source: str) -> dict:
    """A llama-bench record with every one of its own fields, plus what qprof needs to file and pair it."""
    backends = str(rec.get("backends") or "")
    gpus = [g.strip() for g in str(rec.get("gpu_info") or "").split(",") if g.strip()]
    device = "cuda" if "CUDA" in backends.upper() else "cpu"
    samples = rec.get("samples_ns")
    fa = rec.get("flash_attn")
    row = {**rec, "schema": SCHEMA, "peer": PEER, "peer_source": source, "model": model,
           "test": test_name(rec["n_prompt"], rec["n_gen"], int(rec.get("n_depth") or 0)), "device": device,
           "gpu_name": gpus[0] if device == "cuda" and gpus else None, "runtime": "llama-bench",
           "options": f"fa={int(fa) if isinstance(fa, (bool, int)) else fa}",
           # llama-bench synchronizes after every generated token: qprof's --decode-loop synced
           "decode_loop": PEER_DECODE_LOOP if rec.get("n_gen") else None,
           "repetitions": len(samples) if isinstance(samples, list) else None}
    return ordered(row)


def _matches(rec: dict, model) -> bool:
    """The record is of this model file: same size and parameter count where llama-bench gives them."""
    return all(rec.get(k) in (None, getattr(model, attr)) for k, attr in (("model_size", "size_bytes"),
                                                                            ("model_n_params", "n_params")))


def assign_model(rec: dict, loaded: dict, single_file: bool) -> tuple[str, str | None]:
    """(-m spec the record belongs to, a note when that was not a plain file-name match)."""
    path = Path(str(rec.get("model_filename") or "unknown.gguf"))
    by_name = [spec for spec, lm in loaded.items() if Path(lm.path).name == path.name]
    if by_name:
        return by_name[0], None
    if len(loaded) == 1 and single_file:
        spec, lm = next(iter(loaded.items()))
        if _matches(rec, lm.model):
            return spec, (f"llama-bench's {path.name} taken as -m {spec} (the only model on each side; same size "
                          "and parameter count)")
        return path.stem, (f"llama-bench's {path.name} is not the model of -m {spec} (size or parameter count "
                           "differs): its rows are kept unpaired")
    return path.stem, f"llama-bench's {path.name} matches no -m model: its rows are kept unpaired"


def make_rows(records: list[dict], loaded: dict, source: str, ceilings=None,
              here: str | None = None) -> tuple[list[dict], list[str]]:
    """Peer rows for llama-bench records (loaded: -m spec -> LoadedModel), and notes on how models were matched.

    A row measured on this machine's card (here) is read against this card's ceilings, like qprof's rows.
    """
    files = {str(r.get("model_filename")) for r in records}
    rows, notes = [], []
    for rec in records:
        spec, note = assign_model(rec, loaded, len(files) == 1)
        if note and note not in notes:
            notes.append(note)
        row = peer_row(rec, spec, source)
        lm = loaded.get(spec)
        if lm is not None:
            from qprof.runtime.base import decode_weight_bytes

            kind = BenchTest(row["n_prompt"], row["n_gen"]).kind
            flops = prefill_flops(lm.model, row["n_prompt"]) / row["n_prompt"] if kind == "pp" else None
            bounds = bound_fields(kind, decode_weight_bytes(lm.model), flops, ceilings, row["avg_ts"]) \
                if ceilings is not None and here == card(row) else {"bytes_per_token": decode_weight_bytes(lm.model),
                                                                    "flops_per_token": flops}
            row.update(bounds)
        rows.append(row)
    return rows, notes


@dataclass
class Pair:
    model: str
    test: str
    card: str
    qprof: dict | None  # the clean qprof row of the same model, test and card (None: none was run)
    peer: dict

    @property
    def ratio(self) -> float | None:
        """qprof tokens/s over llama.cpp's: above 1, qprof is faster."""
        if self.qprof is None or not self.peer.get("avg_ts"):
            return None
        return float(self.qprof["avg_ts"]) / float(self.peer["avg_ts"])


def is_clean(row: dict) -> bool:
    return all((row.get(k) if row.get(k) is not None else v) == v for k, v in CLEAN.items())


def _reference_rank(row: dict) -> tuple[bool, bool]:
    """How well a clean qprof row stands beside llama-bench's: CUDA-graph decode first (qprof's GPU default, and
    how llama.cpp runs decode), then llama-bench's own loop (synced, or a pp row: no decode at all)."""
    return bool(row.get("cuda_graphs")), decode_loop_of(row) in (None, PEER_DECODE_LOOP)


def pair_rows(rows: list[dict]) -> list[Pair]:
    """Every peer row (the latest per model, test, card and options) with its qprof reference row.

    The reference is the latest clean qprof row of the best _reference_rank: CUDA-graph decode preferred,
    then the synced decode loop, llama-bench's.
    """
    refs: dict[tuple, dict] = {}
    peers: dict[tuple, dict] = {}
    for r in rows:
        key = (str(r.get("model")), str(r.get("test")), card(r))
        if is_peer(r):
            peers[(*key, str(r.get("options")))] = r
        elif is_clean(r) and isinstance(r.get("avg_ts"), (int, float)):
            old = refs.get(key)
            if old is None or _reference_rank(r) >= _reference_rank(old):
                refs[key] = r
    return [Pair(*key[:3], refs.get(key[:3]), row) for key, row in peers.items()]


def paired_in_flight(pairs: list[Pair]) -> bool:
    """Whether any peer row is set beside a qprof row decoded in flight (then LOOP_NOTE says what that means)."""
    return any(p.qprof is not None and decode_loop_of(p.qprof) == "in-flight" for p in pairs)
