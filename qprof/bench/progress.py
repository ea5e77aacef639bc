"""A progress bar on stderr when it is a terminal; silent otherwise (pipes, CI, files)."""

from __future__ import annotations

import sys
from typing import TextIO

import click


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if enabled and total > 0:
            self.bar = click.progressbar(length=total, file=self.stream, label="bench", show_pos=True,
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
