"""Errors that end a command with a defined exit code and a one-line message each.

The CLI turns these into `error: FILE:LINE: PATH: MESSAGE` lines; nothing else in the
package prints errors, so a user never sees a traceback for bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_CELLS_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_LAB_CANNOT_RUN = 3


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input, located as precisely as the input allows."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class HarnessError(Exception):
    """Base of the errors the CLI reports without a traceback."""

    exit_code = EXIT_CELLS_FAILED

    def lines(self) -> list[str]:
        return [str(self)]


class InputError(HarnessError):
    """Invalid matrix, inventory or arguments: reported before anything is touched."""

    exit_code = EXIT_INVALID_INPUT

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class LabError(HarnessError):
    """The lab cannot run what was asked (not provisioned, missing capability)."""

    exit_code = EXIT_LAB_CANNOT_RUN


class PlaybookError(HarnessError):
    """An Ansible playbook failed; the message names the failing host and task."""

    exit_code = EXIT_LAB_CANNOT_RUN
