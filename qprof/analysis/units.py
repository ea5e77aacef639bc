"""How reports write numbers: bytes in decimal units (as nsys and model files state them), counts per step."""

from __future__ import annotations


def size(n) -> str:
    """Bytes in decimal units: 512 B, 16.4 kB, 4.3 GB."""
    n = float(n or 0)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def count(x: float) -> str:
    """A count per step or per boundary: whole numbers as they are, others to two decimals."""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


def plural(n: float, word: str, many: str | None = None) -> str:
    """'1 read', '2 reads', '1.5 reads': the count and the word."""
    return f"{count(n)} {word if n == 1 else (many or word + 's')}"


def api_name(name) -> str:
    """cudaStreamSynchronize_v3020 -> cudaStreamSynchronize (nsys appends the API version)."""
    head, _, tail = str(name).rpartition("_v")
    return head if head and tail.isdigit() else str(name)
