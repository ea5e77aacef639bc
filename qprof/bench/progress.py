"""A progress bar on stderr when it is a terminal; silent otherwise (pipes, CI, files)."""

from __future__ import annotations

import sys
from typing import TextIO

import click


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None, label: str = "bench"):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if enabled and total > 0:
            self.bar = click.progressbar(length=total, file=self.stream, label=label, show_pos=True,
                                         show_eta=True, width=24)
            self.bar.__enter__()  # draws the empty bar at once

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.label = label
            self.bar.update(1)

    def clear(self) -> None:
        """Erase the bar's line so a table row can be printed in its place (it redraws on the next step)."""
        if self.bar is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        """Erase the bar and show the cursor again (click hides it while drawing)."""
        if self.bar is not None:
            self.clear()
            self.stream.write("\x1b[?25h")
            self.stream.flush()
            self.bar = None

    def advance_to(self, done: int) -> None:
        """Move the bar to `done` units (for work measured in bytes rather than steps)."""
        if self.bar is not None:
            self.bar.update(max(done - self.bar.pos, 0))


class ByteProgress:
    """A progress(done, total) callback: a bar on a terminal from the first call, erased when done."""

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool | None = None):
        self.label, self.stream, self.enabled = label, stream, enabled
        self.bar: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(total, self.stream, self.enabled, label=self.label)
        self.bar.advance_to(done)
        if done >= total:
            self.bar.close()
