"""One diagnosis finding (a cause in plain words, its severity, the numbers behind it), and the limits rules share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TOKEN_INPUT_MAX_BYTES = 64  # one token id (and its position) uploaded per step is the step's input, not a fault
SYNCS_PER_STEP_MAX = 2  # reading back what a step produced costs a sync; more per step are the loop's own


@dataclass
class Finding:
    rule: str
    severity: str  # "fault" (something the program does wrong and can stop doing) or "advice"
    message: str
    numbers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"[{self.severity}] {self.message}"
