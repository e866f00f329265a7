"""The CLI's contract on input: exit codes, one line per problem, nothing touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvmharness.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_full_dry_run_shows_every_seed_cell_and_why_it_is_skipped(
        root: Path, tmp_path: Path) -> None:
    done = cli("bench", "--matrix", "full", "--dry-run", "--lab", "local",
               "--out", str(tmp_path), cwd=root)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "run  host-local.http" in out
    assert "skip host-to-td.http" in out
    assert "why: server td:td0: host localhost cannot launch TDX guests: " in out
    assert "skip s003-kata-limited.http-c20k-t120" in out
    assert "26 cells (1 to run, 25 skipped)" in out
    assert "estimated" in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


@pytest.mark.parametrize(("args", "expected"), [
    (["bench", "--matrix", "nope", "--dry-run"], "error: nope: no such matrix"),
    (["bench", "--dry-run"], "error: --matrix: required"),
    (["bench", "--matrix", "smoke", "--lab", "nowhere", "--dry-run"],
     "error: nowhere: no such lab"),
    (["bench", "--matrix", "smoke", "--only", "zzz", "--dry-run"],
     "error: --only: no scenario matches 'zzz'"),
    (["bench", "--resume", "/nonexistent"], "error: /nonexistent: not a run directory"),
    (["provision", "--only", "kernel"], "error: --only: unknown part 'kernel'"),
    (["compare", "a", "b", "--threshold", "x"], "error: cvmharness compare: argument --threshold"),
    (["frobnicate"], "error: cvmharness: argument command: invalid choice"),
])
def test_bad_arguments_are_one_line_exit_2(root: Path, args: list[str], expected: str) -> None:
    done = cli(*args, cwd=root)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines
    assert "Traceback" not in done.stderr


def test_bad_matrix_file_exit_2_names_file_line_field(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x.yml"
    bad.write_text((root / "matrices/smoke.yml").read_text().replace(
        "workloads: [http]}", "workloads: [htp]}"))
    done = cli("bench", "--matrix", str(bad), "--out", str(tmp_path / "runs"), cwd=root)
    assert done.returncode == 2
    assert "x.yml:23: scenarios[1].workloads[0]: unknown workload 'htp'" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_only_selects_scenarios_by_pattern(root: Path) -> None:
    done = cli("bench", "--matrix", "full", "--only", "s003-*", "--dry-run", cwd=root)
    assert done.returncode == 0
    assert "host-local" not in done.stdout
    assert "8 cells (0 to run, 8 skipped)" in done.stdout
