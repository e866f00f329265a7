"""The Ansible content passes yamllint (strict) and ansible-lint (production profile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PATHS = ["roles", "playbooks", "molecule", "inventory"]
YAML_PATHS = [*ANSIBLE_PATHS, ".yamllint", ".ansible-lint"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "PY_COLORS": "0"},
    )


def test_yamllint_strict() -> None:
    done = _run(["yamllint", "--strict", "--format", "parsable", *YAML_PATHS])
    assert done.returncode == 0, done.stdout + done.stderr


def test_ansible_lint_production() -> None:
    done = _run(["ansiblelint", "--nocolor", *ANSIBLE_PATHS])
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-8000:]
