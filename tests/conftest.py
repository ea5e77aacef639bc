"""Every test runs with the user's data paths pointed at its own folder: no test writes the real results file."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    for name in ("QPROF_RESULTS", "QPROF_RESULTS_DIR", "QPROF_CARD", "QPROF_CHARTS_DIR"):
        monkeypatch.delenv(name, raising=False)
