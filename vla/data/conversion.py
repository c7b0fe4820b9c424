"""What a conversion wrote and skipped (every converter's report; the MCAP one extends it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConversionReport:
    out: Path
    source: str
    target: str
    episodes_written: int = 0
    frames_written: int = 0
    skipped: dict[int, str] = field(default_factory=dict)  # source episode -> reason
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"wrote {self.episodes_written} episodes ({self.frames_written} frames) to {self.out} as {self.target}"]
        if self.skipped:
            lines.append(f"SKIPPED {len(self.skipped)} episode(s):")
            lines += [f"  - {why}" for _, why in sorted(self.skipped.items())]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
