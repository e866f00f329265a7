from __future__ import annotations

import json
import os
from pathlib import Path

from cvmharness.bench import reopen_run
from cvmharness.store import RunStore, read_samples


def _sample(cell: str, rep: int) -> dict[str, object]:
    return {"cell_id": cell, "repetition": rep, "status": "ok", "metrics": {"x": rep}}


def test_append_and_read_back(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "run-1", {"status": "running"})
    for rep in (1, 2, 3):
        store.append(_sample("a.http", rep))
    assert [s["repetition"] for s in read_samples(store.run_dir)] == [1, 2, 3]
    meta = json.loads((store.run_dir / "run.json").read_text())
    assert meta["run_id"] == "run-1" and meta["schema"] == 1
    assert (store.run_dir / "facts").is_dir() and (store.run_dir / "raw").is_dir()


def test_a_line_cut_by_a_kill_is_ignored_then_repaired(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "run-1", {})
    store.append(_sample("a.http", 1))
    line = json.dumps(_sample("a.http", 2)).encode()
    fd = os.open(store.run_dir / "samples.ndjson", os.O_WRONLY | os.O_APPEND)
    os.write(fd, line[: len(line) // 2])  # what a kill in the middle of a write leaves
    os.close(fd)
    assert [s["repetition"] for s in read_samples(store.run_dir)] == [1]
    assert store.done_keys() == {("a.http", 1)}
    removed = store.repair()
    assert removed == len(line) // 2
    store.append(_sample("a.http", 2))
    assert [s["repetition"] for s in read_samples(store.run_dir)] == [1, 2]


def test_reopen_for_resume_drops_raw_output_of_unfinished_repetitions(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "run-1", {"status": "running", "resumed": []})
    store.append(_sample("a.http", 1))
    (store.raw_dir("a.http", 1) / "wrk.txt").write_text("done")
    (store.raw_dir("a.http", 2) / "wrk.txt").write_text("half")
    again, done = reopen_run(store.run_dir)
    assert done == {("a.http", 1)}
    assert (store.run_dir / "raw/a.http/1/wrk.txt").read_text() == "done"
    assert not (store.run_dir / "raw/a.http/2/wrk.txt").exists()
    assert len(again.run_meta["resumed"]) == 1 and again.run_meta["status"] == "running"


def test_run_json_is_replaced_atomically(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "run-1", {"status": "running"})
    store.update_meta(status="ok")
    assert json.loads((store.run_dir / "run.json").read_text())["status"] == "ok"
    assert [p.name for p in store.run_dir.iterdir() if p.name.startswith(".")] == []
