"""Progress of a long run: the cell running, cells done of total, and the ETA."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cvmharness.durations import format_duration


@dataclass
class Progress:
    total_cells: int
    total_reps: int
    remaining_s: float
    log_path: Path | None = None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    cells_done: int = 0
    reps_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def _emit(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {line}", file=self.stream, flush=True)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def note(self, line: str) -> None:
        self._emit(line)

    def start_rep(self, cell_id: str, repetition: int, repetitions: int, what: str) -> None:
        self._emit(
            f"cell {self.cells_done + 1}/{self.total_cells} {cell_id} "
            f"rep {repetition}/{repetitions} ({what}) | "
            f"reps {self.reps_done}/{self.total_reps} | ETA {format_duration(self.remaining_s)}"
        )

    def end_rep(self, planned_s: float, status: str, summary: str) -> None:
        self.reps_done += 1
        self.remaining_s = max(0.0, self.remaining_s - planned_s)
        self._emit(f"  -> {status}{': ' + summary if summary else ''}")

    def end_cell(self) -> None:
        self.cells_done += 1

    def finish(self, status: str, run_dir: Path) -> None:
        elapsed = time.monotonic() - self.started
        self._emit(f"run {status} in {format_duration(elapsed)}: {run_dir}")
