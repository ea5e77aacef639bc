"""Capture the profiler's test fixtures with qprof itself on a GPU (run on the H100; CI then parses them on CPU).

    python tests/gpu/capture_fixtures.py [--model smollm2] [-p 4] [-n 4] [--out tests/fixtures]

Writes, each trimmed to the measured run and to what the parsers read (kilobytes, < 1 MB):
    nsys_<model>_clean.sqlite         nsys SQLite export, clean configuration
    nsys_<model>_mask_upload.sqlite   the same with the attention mask uploaded every forward
    kineto_<model>_clean.json.gz      torch.profiler (Kineto) Chrome trace, clean
    kineto_<model>_mask_upload.json.gz
    captured.json                     what was captured: card, model, sizes, versions
Each file is parsed back and diagnosed before it is kept: the clean ones must show no fault and
the mask ones must name the mask upload. Exit status 1 if any capture or check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONFIGS = (("clean", {}), ("mask_upload", {"mask": "upload"}))
MAX_BYTES = 1_000_000


def check(path: Path, reader, label: str) -> list[str]:
    """Problems with a written fixture: not parseable, no kernels, or the wrong diagnosis."""
    from qprof.analysis.activity import restrict_to_run
    from qprof.analysis.diagnosis import diagnose, faults

    df = restrict_to_run(reader(path))
    problems = []
    kernels = df[df["kind"] == "kernel"]
    if kernels.empty:
        problems.append("no kernels")
    elif kernels["nvtx_range"].notna().mean() < 0.95:
        problems.append(f"only {kernels['nvtx_range'].notna().mean():.0%} of kernels charged to a range")
    rules = [f.rule for f in faults(diagnose(df))]
    if label == "clean" and rules:
        problems.append(f"clean run diagnosed with faults {rules}")
    if label == "mask_upload" and "mask_upload" not in rules:
        problems.append(f"mask fault not named (faults: {rules})")
    if path.stat().st_size > MAX_BYTES:
        problems.append(f"{path.stat().st_size} bytes, over {MAX_BYTES}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="workload name or GGUF file")
    ap.add_argument("-p", "--n-prompt", type=int, default=4)
    ap.add_argument("-n", "--n-gen", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    ap.add_argument("--timings", default="nsys,torch", help="comma list of nsys,torch")
    args = ap.parse_args(argv)

    import torch

    from qprof.analysis.kineto_json import read_kineto_trace
    from qprof.analysis.nsys_sqlite import read_nsys_sqlite
    from qprof.analysis.trim import slim_trace, trim_sqlite
    from qprof.profile.loop import load_model
    from qprof.profile.modes import profile_workload
    from qprof.profile.spec import WorkloadSpec
    from qprof.runtime.options import RuntimeOptions

    if not torch.cuda.is_available():
        print("capture_fixtures: no CUDA GPU; the fixtures are captured on the GPU machine", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(str(args.model)).stem.replace("-", "_")
    model = load_model(args.model)
    manifest = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
                "n_prompt": args.n_prompt, "n_gen": args.n_gen, "files": {}}
    failed = False
    with tempfile.TemporaryDirectory(prefix="qprof-capture-") as tmp:
        for timing in args.timings.split(","):
            for label, changes in CONFIGS:
                spec = WorkloadSpec(args.model, "cuda", args.n_prompt, args.n_gen, RuntimeOptions(**changes))
                run = profile_workload(spec, timing, out_dir=Path(tmp) / f"{timing}-{label}",
                                       model=model if timing == "torch" else None)
                for note in run.notes:
                    print(f"[{timing} {label}] note: {note}")
                if run.timing != timing:
                    print(f"[{timing} {label}] FAILED: ran as {run.timing}", file=sys.stderr)
                    failed = True
                    continue
                if timing == "nsys":
                    dest = trim_sqlite(run.artifacts["nsys_sqlite"], args.out / f"nsys_{stem}_{label}.sqlite")
                    problems = check(dest, read_nsys_sqlite, label)
                else:
                    dest = slim_trace(run.artifacts["kineto_trace"], args.out / f"kineto_{stem}_{label}.json.gz")
                    problems = check(dest, read_kineto_trace, label)
                size = dest.stat().st_size
                manifest["files"][dest.name] = {"bytes": size, "timing": timing, "config": spec.options.label(),
                                                "tg_tok_s": run.result.tg_tok_s, "problems": problems}
                print(f"[{timing} {label}] {dest.name}: {size} bytes, tg {run.result.tg_tok_s:.1f} tok/s"
                      + (f", PROBLEMS: {'; '.join(problems)}" if problems else ", checks passed"))
                failed |= bool(problems)
    (args.out / "captured.json").write_text(json.dumps(manifest, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
