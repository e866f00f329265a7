"""The run directory: what a run measured, kept so that nothing is lost on a kill.

Samples are appended one line at a time with a single ``write`` and an ``fsync``: a run
killed at any instant leaves at most a final line without its newline, which readers
skip and ``--resume`` cuts off. run.json is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SAMPLES = "samples.ndjson"
RUN_JSON = "run.json"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line) for every line that ends in a newline."""
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as src:
        for raw in src:
            if not raw.endswith(b"\n"):
                return
            offset += len(raw)
            yield offset, raw


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete sample of a run, in the order written."""
    samples = []
    for _, raw in _complete_lines(Path(run_dir) / SAMPLES):
        if raw.strip():
            samples.append(json.loads(raw))
    return samples


def iter_samples(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Like read_samples, without holding the whole file: for large runs."""
    for _, raw in _complete_lines(Path(run_dir) / SAMPLES):
        if raw.strip():
            yield json.loads(raw)


@dataclass
class RunStore:
    run_dir: Path
    run_meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, out_dir: Path, run_id: str, run_meta: dict[str, Any]) -> RunStore:
        run_dir = Path(out_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / "facts").mkdir()
        (run_dir / "raw").mkdir()
        (run_dir / SAMPLES).touch()
        meta = {"schema": SCHEMA_VERSION, "run_id": run_id, **run_meta}
        store = cls(run_dir=run_dir, run_meta=meta)
        store.save_meta()
        return store

    @classmethod
    def open(cls, run_dir: Path) -> RunStore:
        run_dir = Path(run_dir)
        meta = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
        return cls(run_dir=run_dir, run_meta=meta)

    @property
    def run_id(self) -> str:
        return str(self.run_meta["run_id"])

    def save_meta(self) -> None:
        write_json_atomic(self.run_dir / RUN_JSON, self.run_meta)

    def update_meta(self, **changes: Any) -> None:
        self.run_meta.update(changes)
        self.save_meta()

    def append(self, sample: dict[str, Any]) -> None:
        """Append one sample as one line: a single write, then fsync."""
        line = (json.dumps(sample, sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.run_dir / SAMPLES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write on a regular file means a full disk
                raise OSError(f"short write to {SAMPLES}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def repair(self) -> int:
        """Cut a trailing partial line left by a kill; returns the bytes removed."""
        path = self.run_dir / SAMPLES
        if not path.exists():
            return 0
        end = 0
        for offset, _ in _complete_lines(path):
            end = offset
        size = path.stat().st_size
        if size != end:
            with path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        return size - end

    def done_keys(self) -> set[tuple[str, int]]:
        """(cell_id, repetition) pairs that already have a sample."""
        return {(s["cell_id"], int(s["repetition"])) for s in iter_samples(self.run_dir)}

    def raw_dir(self, cell_id: str, repetition: int) -> Path:
        path = self.run_dir / "raw" / cell_id / str(repetition)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def facts_dir(self) -> Path:
        return self.run_dir / "facts"
