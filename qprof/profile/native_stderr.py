"""Drop known noise that native libraries print straight to file descriptor 2 (e.g. Kineto's USDT marks).

torch.profiler's Kineto writes `USDT:... profiler_start` and `... profiler_stop` to stderr from C++
for every capture, one pair per profiled configuration. Python's sys.stderr never sees them, so the
descriptor itself is pointed at a temporary file for the short call that prints them; afterwards
every other line is passed on to sys.stderr, so real warnings and errors still show.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

KINETO_MARKS = re.compile(r"^USDT:.*\] profiler_(start|stop)\s*$")


@contextmanager
def drop_native_lines(pattern: re.Pattern[str] = KINETO_MARKS):
    """Run the block with fd 2 captured; re-emit the lines that do not match `pattern` on sys.stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not pattern.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
