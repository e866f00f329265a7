"""The bench loop: plan the cells, prepare the lab, run each repetition, keep everything.

Order of work for a run: validate everything (nothing touched on bad input), create the
run directory, check the lab with a read-only playbook, gather facts, then run the cells.
Each repetition ends in exactly one appended sample line, whatever happened, so a killed
run can be resumed where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from types import FrameType
from typing import Any

from cvmharness import __version__
from cvmharness.drivers import Drivers, Endpoint, fetch_status
from cvmharness.durations import format_duration
from cvmharness.errors import (
    EXIT_CELLS_FAILED,
    EXIT_OK,
    InputError,
    LabError,
    PlaybookError,
    Problem,
)
from cvmharness.lab import Lab
from cvmharness.matrix import Cell, Matrix
from cvmharness.progress import Progress
from cvmharness.runner import AnsibleRunner, describe_failure
from cvmharness.store import SCHEMA_VERSION, RunStore
from cvmharness.transport import Transport, kill_live_processes
from cvmharness.workloads.wrk import (
    STATUS_PATH,
    WrkOutputError,
    judge,
    parse_stub_status,
    parse_wrk_json,
    wrk_argv,
)

OVERHEAD_PER_REP_S = 0.4
"""Harness time per repetition beyond the workload itself (status reads, process start);
measured by benchmarks/overhead.py and used only for ETAs."""
WARMUP_SETTLE_S = 0.1
"""Pause after a warm-up so that nginx has counted the warm-up's last requests (sent
just before wrk closed its sockets) before the measured count starts."""
SETUP_S = 8.0
"""Start-up, preflight and facts playbooks before the first repetition, on an idle
machine with one node. Used until the lab has a finished run to learn from."""
SETUP_PER_EXTRA_NODE_S = 4.0
"""What each further node adds to the preflight and facts playbooks."""
TIMING_HISTORY = 20
"""How many of the newest runs in the output directory are looked at for learned timing."""
LEARN_FROM_RUNS = 3
"""Learned timing is the median over this many of the newest matching runs."""


@dataclass(frozen=True)
class Timing:
    """What a run costs beyond its workloads: fixed set-up, and per repetition.

    A finished run records what it measured (run.json ``timing``); the next plan for the
    same lab and nodes uses it, so ETAs follow the machine rather than a constant.
    """

    setup_s: float
    overhead_per_rep_s: float
    learned_from: str | None = None

    @classmethod
    def default(cls, nodes: int) -> Timing:
        extra = max(nodes - 1, 0) * SETUP_PER_EXTRA_NODE_S
        return cls(setup_s=SETUP_S + extra, overhead_per_rep_s=OVERHEAD_PER_REP_S)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    skip_reason: str | None

    def seconds(self, overhead_per_rep_s: float = OVERHEAD_PER_REP_S) -> float:
        if self.skip_reason is not None:
            return 0.0
        return self.cell.repetitions * (self.cell.workload_seconds() + overhead_per_rep_s)


@dataclass(frozen=True)
class Plan:
    cells: tuple[PlannedCell, ...]
    timing: Timing = field(default_factory=lambda: Timing.default(1))

    @property
    def runnable(self) -> list[PlannedCell]:
        return [p for p in self.cells if p.skip_reason is None]

    def estimated_s(self) -> float:
        work = sum(p.seconds(self.timing.overhead_per_rep_s) for p in self.cells)
        return work + (self.timing.setup_s if self.runnable else 0.0)

    def repetitions(self) -> int:
        return sum(p.cell.repetitions for p in self.cells)


def select(matrix: Matrix, only: list[str] | None) -> list[Cell]:
    if not only:
        return list(matrix.cells)
    ids = {c.scenario for c in matrix.cells}
    problems = [Problem("--only", "", f"no scenario matches {pattern!r} "
                                      f"(scenarios: {', '.join(sorted(ids))})")
                for pattern in only if not any(fnmatch(i, pattern) for i in ids)]
    if problems:
        raise InputError(problems)
    return [c for c in matrix.cells if any(fnmatch(c.scenario, p) for p in only)]


def make_plan(matrix: Matrix, drivers: Drivers, only: list[str] | None,
              history: Path | None = None) -> Plan:
    """The cells to run or skip; timing learned from the newest finished run in
    ``history`` (the output directory) on the same lab and nodes, if there is one."""
    plan = Plan(tuple(
        PlannedCell(cell, drivers.skip_reason(cell.client, cell.server, cell.tool))
        for cell in select(matrix, only)
    ))
    nodes = nodes_in_use(plan, drivers)
    learned = learned_timing(history, drivers.lab.name, nodes) if history else None
    return replace(plan, timing=learned or Timing.default(len(nodes)))


def learned_timing(history: Path, lab: str, nodes: list[str]) -> Timing | None:
    """The median timing of the (up to) three newest finished runs on this lab and nodes."""
    try:
        metas = sorted(history.glob("*/run.json"), key=lambda f: f.stat().st_mtime,
                       reverse=True)[:TIMING_HISTORY]
    except OSError:
        return None
    found: list[tuple[str, float, float]] = []
    for path in metas:
        try:
            meta = json.loads(path.read_text())
            timing = meta.get("timing") or {}
            if (meta.get("status") == "ok" and meta["lab"]["name"] == lab
                    and timing.get("nodes") == nodes):
                found.append((path.parent.name, float(timing["setup_s"]),
                              float(timing["overhead_per_rep_s"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if len(found) == LEARN_FROM_RUNS:
            break
    if not found:
        return None
    runs = found[0][0] if len(found) == 1 else f"{found[0][0]} and {len(found) - 1} before"
    return Timing(setup_s=statistics.median(f[1] for f in found),
                  overhead_per_rep_s=statistics.median(f[2] for f in found),
                  learned_from=runs)


def format_plan(plan: Plan, matrix: Matrix, lab: Lab) -> str:
    lines = [f"matrix {matrix.name} ({matrix.source}) on lab {lab.name} ({lab.inventory})"]
    width = max((len(p.cell.cell_id) for p in plan.cells), default=10)
    for p in plan.cells:
        c = p.cell
        what = (f"{c.client.label()} -> {c.server.label()}"
                + (f" via {c.via}" if c.via else ""))
        params = " ".join(f"{k}={format_duration(v) if k == 'duration' else v}"
                          for k, v in c.params.items()
                          if k in ("threads", "connections", "duration", "path", "protocol",
                                   "rw", "test", "streams"))
        timing = (f"x{c.repetitions} warmup {format_duration(c.warmup_s)} "
                  f"cooldown {format_duration(c.cooldown_s)}")
        state = "run " if p.skip_reason is None else "skip"
        lines.append(f"  {state} {c.cell_id:<{width}}  {what}  {c.tool} {params}  {timing}")
        if p.skip_reason is not None:
            lines.append(f"       {'':<{width}}  why: {p.skip_reason}")
    n_run = len(plan.runnable)
    lines.append(
        f"{len(plan.cells)} cells ({n_run} to run, {len(plan.cells) - n_run} skipped), "
        f"{sum(p.cell.repetitions for p in plan.runnable)} repetitions to run, "
        f"estimated {format_duration(plan.estimated_s())}"
        + (f" (timing learned from run {plan.timing.learned_from})"
           if plan.timing.learned_from and plan.runnable else "")
    )
    return "\n".join(lines)


def git_revision(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                            "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def new_run_id(matrix_name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{matrix_name}-{secrets.token_hex(2)}"


class Interrupted(Exception):
    """SIGINT or SIGTERM during a run: stop, keep what is done, say how to resume."""


@contextmanager
def _interruptible() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        kill_live_processes()
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class BenchContext:
    root: Path
    lab: Lab
    matrix: Matrix
    store: RunStore
    plan: Plan
    runner: AnsibleRunner
    drivers: Drivers
    progress: Progress
    failed: int = 0
    invalid: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


def _base_sample(ctx: BenchContext, cell: Cell, repetition: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "run_id": ctx.store.run_id,
        "cell_id": cell.cell_id,
        "scenario": cell.scenario,
        "client": cell.client.to_dict(),
        "server": cell.server.to_dict(),
        "via": cell.via,
        "workload": cell.workload,
        "tool": cell.tool,
        "params": cell.params,
        "repetition": repetition,
        "started_at": None,
        "ended_at": None,
        "status": "failed",
        "reason": None,
        "metrics": None,
        "server_requests": None,
        "url": None,
    }


def _read_count(transport: Transport, endpoint: Endpoint) -> int:
    return parse_stub_status(fetch_status(transport, endpoint.url(STATUS_PATH)))


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def run_wrk_rep(ctx: BenchContext, cell: Cell, repetition: int) -> dict[str, Any]:
    sample = _base_sample(ctx, cell, repetition)
    raw = ctx.store.raw_dir(cell.cell_id, repetition)
    client_driver = ctx.drivers.for_placement(cell.client)
    node = client_driver.client_node(cell.client)
    transport = client_driver.client_transport(cell.client)
    endpoint = ctx.drivers.for_placement(cell.server).endpoint(
        cell.server, cell.client, cell.params.get("port"), cell.via)
    url = endpoint.url(str(cell.params["path"]))
    sample["url"] = url
    limit = float(cell.params["duration"]) + float(cell.params.get("timeout", 2)) + 60
    if cell.warmup_s > 0:
        warm = transport.run(
            wrk_argv(node.wrk_binary, None, cell.params, url, cell.warmup_s),
            math.ceil(cell.warmup_s) + limit)
        _write(raw / "warmup.txt", warm.stdout + warm.stderr)
        if warm.rc != 0:
            sample["reason"] = f"warm-up: wrk exited {warm.rc}: {warm.stderr.strip()[:300]}"
            return sample
        time.sleep(WARMUP_SETTLE_S)
    try:
        before = _read_count(transport, endpoint)
    except (OSError, ValueError) as exc:
        sample["reason"] = f"server status before the run: {exc}"
        return sample
    argv = wrk_argv(node.wrk_binary, node.wrk_script, cell.params, url,
                    float(cell.params["duration"]))
    _write(raw / "command.txt", " ".join(argv) + "\n")
    sample["started_at"] = utcnow()
    done = transport.run(argv, limit)
    sample["ended_at"] = utcnow()
    _write(raw / "wrk.txt", done.stdout)
    if done.stderr:
        _write(raw / "wrk.stderr.txt", done.stderr)
    if done.timed_out or done.rc != 0:
        why = "timed out" if done.timed_out else f"exited {done.rc}"
        sample["reason"] = f"wrk {why}: {(done.stderr or done.stdout).strip()[-300:]}"
        return sample
    try:
        result = parse_wrk_json(done.stdout)
    except WrkOutputError as exc:
        sample["reason"] = str(exc)
        return sample
    sample["metrics"] = result.metrics()
    try:
        after = _read_count(transport, endpoint)
        sample["server_requests"] = after - before - 1
    except (OSError, ValueError) as exc:
        _write(raw / "server.txt", f"status after the run: {exc}\n")
    _write(raw / "server.json", f'{{"node": "{endpoint.server_node}", '
                                f'"server_requests": {sample["server_requests"] or "null"}}}\n')
    sample["status"], sample["reason"] = judge(result, sample["server_requests"], cell.params)
    return sample


def _summary(sample: dict[str, Any]) -> str:
    m = sample.get("metrics")
    if sample["status"] == "ok" and m:
        return (f"{m['requests_per_sec']:.0f} req/s, p99 {m['latency_ms']['p99']:.2f} ms, "
                f"server counted {sample['server_requests']}")
    return str(sample.get("reason") or "")


def run_cells(ctx: BenchContext, done: set[tuple[str, int]]) -> None:
    todo = [(p, r) for p in ctx.plan.cells for r in range(1, p.cell.repetitions + 1)
            if (p.cell.cell_id, r) not in done]
    last_runnable = max((i for i, (p, _) in enumerate(todo) if p.skip_reason is None),
                        default=-1)
    current: str | None = None
    for index, (planned, repetition) in enumerate(todo):
        cell = planned.cell
        if current is not None and current != cell.cell_id:
            ctx.progress.end_cell()
        current = cell.cell_id
        if planned.skip_reason is not None:
            sample = _base_sample(ctx, cell, repetition)
            sample.update(status="skipped", reason=planned.skip_reason)
            ctx.store.append(sample)
            continue
        planned_s = cell.workload_seconds() + ctx.plan.timing.overhead_per_rep_s
        ctx.progress.start_rep(cell.cell_id, repetition, cell.repetitions,
                               f"{cell.client.label()} -> {cell.server.label()}")
        try:
            sample = run_wrk_rep(ctx, cell, repetition)
        except OSError as exc:
            sample = _base_sample(ctx, cell, repetition)
            sample["reason"] = f"{type(exc).__name__}: {exc}"
        ctx.store.append(sample)
        ctx.statuses[sample["status"]] = ctx.statuses.get(sample["status"], 0) + 1
        ctx.progress.end_rep(planned_s, sample["status"], _summary(sample))
        if index < last_runnable and cell.cooldown_s > 0:
            time.sleep(cell.cooldown_s)
    if current is not None:
        ctx.progress.end_cell()


def nodes_in_use(plan: Plan, drivers: Drivers) -> list[str]:
    # A guest placement uses two inventory nodes: the guest and the host it runs on,
    # whose play adds the guest to the inventory of facts.yml and bench_preflight.yml.
    return sorted({
        node
        for planned in plan.runnable
        for p in (planned.cell.client, planned.cell.server)
        for node in drivers.for_placement(p).nodes(p)
    })


def check_lab(opts: BenchOptions, plan: Plan) -> None:
    """Read-only check that the lab can run the plan, before any run directory exists."""
    drivers = Drivers(opts.lab)
    pod_problems = drivers.pods.preflight(
        (role, p) for planned in plan.runnable
        for role, p in (("client", planned.cell.client), ("server", planned.cell.server)))
    if pod_problems:
        raise LabError(f"lab {opts.lab.name} is not ready: " + "; ".join(pod_problems))
    nodes = nodes_in_use(plan, drivers)
    if not nodes:
        return
    runner = AnsibleRunner(project_dir=opts.root, inventory=opts.lab.inventory,
                           become_password=opts.become_password)
    result = runner.run_playbook("bench_preflight.yml", limit=",".join(nodes), timeout_s=600)
    if not result.ok:
        raise LabError(f"lab {opts.lab.name} is not ready: {describe_failure(result)}")


def gather_facts(ctx: BenchContext) -> None:
    nodes = nodes_in_use(ctx.plan, ctx.drivers)
    ctx.progress.note(f"gathering facts of {', '.join(nodes)}")
    facts = ctx.runner.run_playbook(
        "facts.yml", {"cvmharness_run_dir": str(ctx.store.run_dir.resolve())},
        limit=",".join(nodes), timeout_s=600)
    if not facts.ok:
        raise PlaybookError(describe_failure(facts))


@dataclass(frozen=True)
class BenchOptions:
    root: Path
    lab: Lab
    matrix: Matrix
    out: Path
    only: list[str] | None
    argv: list[str]
    become_password: str | None = None
    resume: Path | None = None
    started: float | None = None
    """time.monotonic() when the command started: the run's set-up time counts from it."""


def _context(opts: BenchOptions, store: RunStore, plan: Plan, done: set[tuple[str, int]]
             ) -> BenchContext:
    remaining = sum(
        (p.cell.workload_seconds() + plan.timing.overhead_per_rep_s)
        for p in plan.runnable for r in range(1, p.cell.repetitions + 1)
        if (p.cell.cell_id, r) not in done
    )
    progress = Progress(
        total_cells=len(plan.cells),
        total_reps=sum(p.cell.repetitions for p in plan.runnable),
        remaining_s=remaining,
        log_path=store.run_dir / "progress.log",
    )
    progress.reps_done = sum(1 for p in plan.runnable for r in range(1, p.cell.repetitions + 1)
                             if (p.cell.cell_id, r) in done)
    progress.cells_done = sum(1 for p in plan.cells
                              if all((p.cell.cell_id, r) in done
                                     for r in range(1, p.cell.repetitions + 1)))
    return BenchContext(
        root=opts.root, lab=opts.lab, matrix=opts.matrix, store=store, plan=plan,
        runner=AnsibleRunner(project_dir=opts.root, inventory=opts.lab.inventory,
                             become_password=opts.become_password),
        drivers=Drivers(opts.lab, run_dir=store.run_dir), progress=progress,
    )


def run_bench(opts: BenchOptions, plan: Plan, store: RunStore,
              done: set[tuple[str, int]]) -> int:
    ctx = _context(opts, store, plan, done)
    status = "failed"
    try:
        with _interruptible():
            if plan.runnable and not any(ctx.store.facts_dir().iterdir()):
                gather_facts(ctx)
            setup_done = time.monotonic()
            run_cells(ctx, done)
            if not done and opts.started is not None:
                _record_timing(ctx, opts.started, setup_done)
        bad = ctx.statuses.get("failed", 0) + ctx.statuses.get("invalid", 0)
        previous = [s for s in _statuses(store) if s in ("failed", "invalid")]
        status = "failed" if bad or previous else "ok"
    except Interrupted as exc:
        status = "interrupted"
        ctx.progress.note(f"interrupted by {exc}; finish with: cvmharness bench --resume "
                          f"{store.run_dir}")
        return 130
    finally:
        store.update_meta(status=status, ended_at=utcnow())
        ctx.drivers.close()
        ctx.progress.finish(status, store.run_dir)
    return EXIT_OK if status == "ok" else EXIT_CELLS_FAILED


def _record_timing(ctx: BenchContext, started: float, setup_done: float) -> None:
    """Keep what this run cost beyond its workloads, for the next plan's estimate."""
    reps = [(p, r) for p in ctx.plan.runnable for r in range(1, p.cell.repetitions + 1)]
    if not reps:
        return
    work = sum(p.cell.workload_seconds() for p, _ in reps)
    overhead = max((time.monotonic() - setup_done - work) / len(reps), 0.0)
    ctx.store.update_meta(timing={
        "setup_s": round(setup_done - started, 2),
        "overhead_per_rep_s": round(overhead, 3),
        "nodes": nodes_in_use(ctx.plan, ctx.drivers),
    })


def _statuses(store: RunStore) -> list[str]:
    from cvmharness.store import iter_samples

    return [str(s.get("status")) for s in iter_samples(store.run_dir)]


def start_run(opts: BenchOptions, plan: Plan) -> RunStore:
    run_id = new_run_id(opts.matrix.name)
    meta: dict[str, Any] = {
        "harness": {"version": __version__, "git_revision": git_revision(opts.root),
                    "python": platform.python_version()},
        "matrix": {"file": opts.matrix.source, "name": opts.matrix.name,
                   "resolved": opts.matrix.resolved()},
        "lab": opts.lab.describe(),
        "only": opts.only,
        "plan": {"cells": len(plan.cells), "runnable_cells": len(plan.runnable),
                 "repetitions": plan.repetitions(),
                 "estimated_s": round(plan.estimated_s(), 1)},
        "argv": opts.argv,
        "controller": {"hostname": platform.node(), "pid": os.getpid()},
        "started_at": utcnow(),
        "ended_at": None,
        "status": "running",
        "resumed": [],
    }
    return RunStore.create(opts.out, run_id, meta)


def reopen_run(run_dir: Path) -> tuple[RunStore, set[tuple[str, int]]]:
    """Open a run for --resume: cut a partial line, drop raw output of unfinished reps."""
    store = RunStore.open(run_dir)
    store.repair()
    done = store.done_keys()
    raw = store.run_dir / "raw"
    if raw.exists():
        for cell_dir in raw.iterdir():
            for rep_dir in cell_dir.iterdir():
                if rep_dir.name.isdigit() and (cell_dir.name, int(rep_dir.name)) not in done:
                    for f in rep_dir.iterdir():
                        f.unlink()
    store.update_meta(status="running", ended_at=None,
                      resumed=[*store.run_meta.get("resumed", []), utcnow()])
    return store, done
