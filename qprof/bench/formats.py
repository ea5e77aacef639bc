"""Printers for bench rows, as llama-bench has them: md, csv, json, jsonl and sql; each streams row by row."""

from __future__ import annotations

import csv
import io
import json
import math

from qprof.bench.record import FIELDS

FORMATS = ("md", "csv", "json", "jsonl", "sql")
SQL_TABLE = "qprof_bench"
SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "bool": "INTEGER", "float": "REAL", "list": "TEXT"}

# markdown columns: (header, width; negative = left-aligned) as llama-bench lays them out
MD_COLUMNS = {
    "model": ("model", -30), "size": ("size", 10), "params": ("params", 10), "backend": ("backend", -9),
    "n_gpu_layers": ("ngl", 3), "n_threads": ("threads", 7),
    "options": ("mode", -16), "mask": ("mask", -6), "scalar_upload": ("scalar_up", 9), "sync_every_op": ("sync_op", 7),
    "inject": ("inject", -9), "cuda_graphs": ("graphs", 6),
    "prefill_graphs": ("pp_graphs", 9), "nvtx": ("nvtx", 4), "kv_type": ("kv", -4),
    "fused": ("fused", 5), "pdl": ("pdl", 3), "n_ctx": ("n_ctx", 6), "decode_loop": ("loop", -9),
    "host": ("host", -12), "gpu_index": ("gpu", 3),
    "test": ("test", 15), "t/s": ("t/s", 20), "bound": ("bound t/s", 10), "pct": ("% bound", 7),
    "ratio": ("qprof/llama.cpp", 15),
}
BOUND_LEGEND = ("bound: tg = decode floor (read bandwidth / weight bytes per token), "
                "pp = prefill roofline (GEMM rate / FLOPs per token)")
RATIO_LEGEND = "qprof/llama.cpp: the clean qprof row's t/s over llama.cpp's, same model, test and card"


def _finite(value):
    """JSON has no NaN/inf: write null (strict readers reject the bare words)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(row: dict, indent: int | None = None) -> str:
    return json.dumps({k: _finite(v) for k, v in row.items()}, indent=indent, default=str, allow_nan=False)


def human_size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.2f} MiB"
    return f"{n_bytes / 2**30:.2f} GiB"


def human_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def flat_value(value) -> str:
    """One cell for csv/sql: lists as comma-joined text, booleans as 0/1, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(flat_value(v) for v in value)
    return str(value)


class Printer:
    def header(self) -> str:
        return ""

    def row(self, row: dict) -> str:
        raise NotImplementedError

    def footer(self) -> str:
        return ""


class MarkdownPrinter(Printer):
    """llama-bench's table: model, size, params, backend, the switches that vary, test, t/s; plus the bound
    (decode floor or prefill roofline) and, beside llama.cpp's rows, the qprof/llama.cpp ratio."""

    def __init__(self, switches: list[str], device: str, build: str = "", peers: bool = False):
        cols = ["model", "size", "params", "backend", "n_gpu_layers" if device == "cuda" else "n_threads"]
        self.columns = cols + [s for s in switches if s in MD_COLUMNS and s not in cols] + ["test", "t/s", "bound",
                                                                                          "pct"]
        self.columns += ["ratio"] if peers else []
        self.build = build
        self.peers = peers

    def header(self) -> str:
        names = "|" + "".join(f" {MD_COLUMNS[c][0]:{'<' if MD_COLUMNS[c][1] < 0 else '>'}{abs(MD_COLUMNS[c][1])}} |"
                              for c in self.columns)
        rule = "|" + "".join(f" {'-' * (abs(MD_COLUMNS[c][1]) - 1)}{':' if MD_COLUMNS[c][1] > 0 else '-'} |"
                             for c in self.columns)
        return names + "\n" + rule + "\n"

    def cell(self, row: dict, col: str) -> str:
        if col == "model":
            return str(row.get("model_type") or row.get("model"))
        if col == "size":
            return human_size(row.get("model_size"))
        if col == "params":
            return human_params(row.get("model_n_params"))
        if col == "backend":
            return str(row.get("peer") or row.get("backends"))
        if col == "t/s":
            return f"{row['avg_ts']:.2f} ± {row.get('stddev_ts') or 0.0:.2f}"
        if col == "bound":
            bound = row.get("floor_ts") or row.get("roofline_ts")
            return f"{bound:.2f}" if bound else "-"
        if col == "pct":
            pct = row.get("pct_of_floor") or row.get("pct_of_roofline")
            return f"{pct:.1f}%" if pct else "-"
        if col == "ratio":
            if not row.get("peer"):
                return ""
            return f"{row['qprof_ratio']:.2f}x" if row.get("qprof_ratio") else "-"
        return flat_value(row.get(col))

    def row(self, row: dict) -> str:
        cells = []
        for c in self.columns:
            width = MD_COLUMNS[c][1]
            cells.append(f" {self.cell(row, c):{'<' if width < 0 else '>'}{abs(width)}} |")
        return "|" + "".join(cells) + "\n"

    def footer(self) -> str:
        legends = [BOUND_LEGEND] + ([RATIO_LEGEND] if self.peers else [])
        return "\n" + "\n".join(legends) + (f"\nbuild: {self.build}" if self.build else "") + "\n"


class CsvPrinter(Printer):
    def _line(self, values: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def header(self) -> str:
        return self._line(list(FIELDS))

    def row(self, row: dict) -> str:
        return self._line([flat_value(row.get(f)) for f in FIELDS])


class JsonPrinter(Printer):
    """A JSON array written one element at a time, so an interrupted run still closes it."""

    def __init__(self) -> None:
        self.first = True

    def header(self) -> str:
        return "["

    def row(self, row: dict) -> str:
        sep = "\n" if self.first else ",\n"
        self.first = False
        return sep + "\n".join("  " + line for line in to_json(row, indent=2).splitlines())

    def footer(self) -> str:
        return "\n]\n" if not self.first else "]\n"


class JsonlPrinter(Printer):
    def row(self, row: dict) -> str:
        return to_json(row) + "\n"


def sql_literal(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NULL"
    if kind == "bool":
        return "1" if value else "0"
    if kind in ("int", "float") and isinstance(value, (int, float)):
        return repr(int(value)) if kind == "int" else repr(float(value))
    text = flat_value(value)
    return "'" + text.replace("'", "''") + "'"


class SqlPrinter(Printer):
    def header(self) -> str:
        cols = ",\n".join(f"  {name} {SQL_TYPES[kind]}" for name, kind in FIELDS.items())
        return f"CREATE TABLE IF NOT EXISTS {SQL_TABLE} (\n{cols}\n);\n\n"

    def row(self, row: dict) -> str:
        values = ", ".join(sql_literal(row.get(name), kind) for name, kind in FIELDS.items())
        return f"INSERT INTO {SQL_TABLE} ({', '.join(FIELDS)}) VALUES ({values});\n"


def make_printer(fmt: str, switches: list[str] | None = None, device: str = "cpu", build: str = "",
                 peers: bool = False) -> Printer:
    if fmt == "md":
        return MarkdownPrinter(switches or [], device, build, peers)
    if fmt == "csv":
        return CsvPrinter()
    if fmt == "json":
        return JsonPrinter()
    if fmt == "jsonl":
        return JsonlPrinter()
    if fmt == "sql":
        return SqlPrinter()
    from qprof.errors import QprofError

    raise QprofError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
