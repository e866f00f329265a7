"""Command line: parse options, build the inputs, call one function per subcommand."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from cvmharness import __version__
from cvmharness.errors import (
    EXIT_INVALID_INPUT,
    EXIT_LAB_CANNOT_RUN,
    EXIT_OK,
    HarnessError,
    InputError,
    LabError,
    Problem,
)

STARTED = time.monotonic()
"""When this process imported the CLI: a run's set-up time counts from here."""

PROVISION_PARTS = ("nginx", "wrk", "guests", "cluster")


def project_root() -> Path:
    """Where playbooks/, roles/, inventory/ and matrices/ live."""
    env = os.environ.get("CVMHARNESS_HOME")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    if (here / "playbooks").is_dir():
        return here
    return Path.cwd()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_INVALID_INPUT)


def _become_password(args: argparse.Namespace) -> str | None:
    if getattr(args, "ask_become_pass", False):
        return getpass.getpass("BECOME password: ")
    return None


def _events_printer(verbose: bool) -> Callable[[dict[str, Any]], None]:
    def on_event(event: dict[str, Any]) -> None:
        name = event.get("event")
        data = event.get("event_data", {})
        if name == "playbook_on_task_start" and verbose:
            print(f"  task: {data.get('task')}", file=sys.stderr, flush=True)
        elif name in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            res = data.get("res", {})
            state = {"runner_on_failed": "FAILED", "runner_on_unreachable": "UNREACHABLE"}.get(
                str(name), "changed" if res.get("changed") else "ok")
            if verbose or state != "ok":
                print(f"  [{data.get('host')}] {data.get('task')}: {state}",
                      file=sys.stderr, flush=True)
        elif name == "playbook_on_play_start":
            print(f"play: {data.get('play')}", file=sys.stderr, flush=True)
    return on_event


def _check_parts(only: list[str] | None) -> None:
    unknown = [p for p in only or [] if p not in PROVISION_PARTS]
    if unknown:
        raise InputError([Problem("--only", "", f"unknown part {p!r} "
                                  f"(parts: {', '.join(PROVISION_PARTS)})") for p in unknown])


def cmd_provision(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.lab import load_lab
    from cvmharness.runner import AnsibleRunner, describe_failure

    _check_parts(args.only)
    lab = load_lab(args.lab, root)
    runner = AnsibleRunner(project_dir=root, inventory=lab.inventory,
                           become_password=_become_password(args))
    print(f"provisioning lab {lab.name} ({lab.inventory})", file=sys.stderr)
    result = runner.run_playbook("provision.yml", tags=args.only,
                                 on_event=_events_printer(args.verbose), timeout_s=3600)
    if not result.ok:
        raise LabError(f"provision failed: {describe_failure(result)}")
    print(f"lab {lab.name} provisioned ({result.changed} changes)", file=sys.stderr)
    return EXIT_OK


def cmd_teardown(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.lab import load_lab
    from cvmharness.runner import AnsibleRunner, describe_failure

    _check_parts(args.only)
    lab = load_lab(args.lab, root)
    runner = AnsibleRunner(project_dir=root, inventory=lab.inventory,
                           become_password=_become_password(args))
    if lab.clusters() and not args.only:
        # Namespaces of runs killed before their own teardown, while the clusters exist.
        from cvmharness.kube import PodError, teardown_lab

        try:
            deleted = teardown_lab(lab)
            print(f"deleted {len(deleted)} cvmharness namespaces", file=sys.stderr)
        except PodError as exc:
            print(f"warning: {exc}", file=sys.stderr)
    result = runner.run_playbook("teardown.yml", tags=args.only,
                                 on_event=_events_printer(args.verbose))
    if not result.ok:
        raise LabError(f"teardown failed: {describe_failure(result)}")
    print(f"lab {lab.name} torn down ({result.changed} changes)", file=sys.stderr)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.bench import make_plan
    from cvmharness.drivers import Drivers
    from cvmharness.lab import load_lab
    from cvmharness.matrix import load_matrix
    from cvmharness.runner import AnsibleRunner, describe_failure

    lab = load_lab(args.lab, root)
    matrix = load_matrix(args.matrix, root)
    drivers = Drivers(lab)
    print(f"lab {lab.name} ({lab.inventory}): hosts {', '.join(lab.hosts)}")
    for host in lab.hosts.values():
        guests = ", ".join(f"{g.flavor}:{g.name}" for g in host.vars.cvmharness_guests) or "none"
        clusters = ", ".join(c.name for c in host.vars.cvmharness_clusters) or "none"
        print(f"  {host.name}: {'local' if host.is_local else 'ssh'}, nginx ports "
              f"{host.vars.nginx_bench_ports}, guests {guests}, clusters {clusters}")
    runner = AnsibleRunner(project_dir=root, inventory=lab.inventory,
                           become_password=_become_password(args))
    check = runner.run_playbook("bench_preflight.yml", timeout_s=600)
    healthy = check.ok
    print("host placement: " + ("ready (nginx answers, wrk installed)" if healthy else
                                f"NOT ready: {describe_failure(check)}"))
    plan = make_plan(matrix, drivers, None)
    print(f"matrix {matrix.name} ({matrix.source}), per scenario:")
    seen: set[str] = set()
    for planned in plan.cells:
        scenario = planned.cell.scenario
        if scenario in seen:
            continue
        seen.add(scenario)
        reason = planned.skip_reason
        if reason is None and not healthy:
            reason = "the lab is not provisioned (run: cvmharness provision)"
        print(f"  {scenario}: " + ("can run" if reason is None else f"cannot run: {reason}"))
    return EXIT_OK if healthy else EXIT_LAB_CANNOT_RUN


def cmd_bench(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.bench import (
        BenchOptions,
        check_lab,
        format_plan,
        make_plan,
        reopen_run,
        run_bench,
        start_run,
    )
    from cvmharness.drivers import Drivers
    from cvmharness.lab import load_lab
    from cvmharness.matrix import load_matrix, matrix_from_resolved

    argv = sys.argv[:]
    if args.resume is not None:
        if args.matrix is not None or args.only:
            raise InputError([Problem("--resume", "", "resumes the run's own matrix and "
                                      "--only; do not pass --matrix or --only with it")])
        run_dir = Path(args.resume)
        if not (run_dir / "run.json").is_file():
            raise InputError([Problem(str(run_dir), "", "not a run directory (no run.json)")])
        from cvmharness.store import RunStore

        meta = RunStore.open(run_dir).run_meta
        matrix = matrix_from_resolved(meta["matrix"]["resolved"], str(run_dir / "run.json"))
        lab = load_lab(args.lab or meta["lab"]["inventory"], root)
        only = meta.get("only")
    else:
        if args.matrix is None:
            raise InputError([Problem("--matrix", "", "required (a name under matrices/ "
                                      "or a path)")])
        lab = load_lab(args.lab or "local", root)
        matrix = load_matrix(args.matrix, root)
        only = args.only
    plan = make_plan(matrix, Drivers(lab), only, history=Path(args.out))
    if args.dry_run:
        print(format_plan(plan, matrix, lab))
        return EXIT_OK
    opts = BenchOptions(root=root, lab=lab, matrix=matrix, out=Path(args.out), only=only,
                        argv=argv, become_password=_become_password(args),
                        resume=None if args.resume is None else Path(args.resume),
                        started=STARTED)
    check_lab(opts, plan)
    if opts.resume is not None:
        store, done = reopen_run(opts.resume)
        print(f"resuming {store.run_dir}: {len(done)} repetitions already done",
              file=sys.stderr)
    else:
        store, done = start_run(opts, plan), set()
        print(f"run {store.run_id}: {len(plan.runnable)} of {len(plan.cells)} cells to run, "
              f"results in {store.run_dir}", file=sys.stderr)
    print(store.run_dir)
    return run_bench(opts, plan, store, done)


def cmd_report(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        raise InputError([Problem(str(run_dir), "", "not a run directory (no run.json)")])
    md, html = write_report(run_dir, baseline=args.baseline)
    print(md)
    print(html)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.compare import compare_runs

    for run in (args.run_a, args.run_b):
        if not (Path(run) / "run.json").is_file():
            raise InputError([Problem(run, "", "not a run directory (no run.json)")])
    if args.threshold <= 0:
        raise InputError([Problem("--threshold", "", "must be a positive percentage")])
    comparison = compare_runs(Path(args.run_a), Path(args.run_b), args.threshold)
    print(comparison.format_text())
    return int(comparison.exit_code)


def cmd_import(args: argparse.Namespace, root: Path) -> int:
    from cvmharness.importer import import_logs

    missing = [log for log in args.logs if not Path(log).is_file()]
    if missing:
        raise InputError([Problem(m, "", "no such file") for m in missing])
    run_dir = import_logs([Path(p) for p in args.logs], Path(args.out), args.scenario)
    print(run_dir)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cvmharness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cvmharness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def lab_arg(p: argparse.ArgumentParser, default: str | None = "local") -> None:
        p.add_argument("--lab", default=default,
                       help="inventory name under inventory/ or a path (default: local)")
        p.add_argument("-K", "--ask-become-pass", action="store_true",
                       help="ask for the privilege escalation password, as ansible does")

    p = sub.add_parser("doctor", help="what this lab can run, and why not")
    lab_arg(p)
    p.add_argument("--matrix", default="full", help="matrix to check (default: full)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("provision", help="bring the lab to the declared state (idempotent)")
    lab_arg(p)
    p.add_argument("--only", nargs="+", metavar="PART",
                   help=f"only these parts: {', '.join(PROVISION_PARTS)}")
    p.add_argument("-v", "--verbose", action="store_true", help="print every task")
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("bench", help="run a matrix")
    lab_arg(p, default=None)
    p.add_argument("--matrix", help="matrix name under matrices/ or a path")
    p.add_argument("--out", default="runs", help="directory for runs (default: runs)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the plan with its estimated duration")
    p.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run")
    p.add_argument("--only", nargs="+", metavar="SCENARIO",
                   help="only these scenario ids (shell patterns allowed)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="write report.md and report.html of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--baseline", metavar="SCENARIO", help="scenario the others are compared to")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="compare two runs cell by cell")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--threshold", type=float, default=5.0, metavar="PCT",
                   help="regression threshold in percent (default: 5)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("import", help="turn wrk text logs into samples of a run")
    p.add_argument("logs", nargs="+", metavar="LOG")
    p.add_argument("--out", default="runs", help="directory for runs (default: runs)")
    p.add_argument("--scenario", help="scenario id for the imported samples")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("teardown", help="remove everything the harness created")
    lab_arg(p)
    p.add_argument("--only", nargs="+", metavar="PART",
                   help=f"only what these parts created: {', '.join(PROVISION_PARTS)}")
    p.add_argument("-v", "--verbose", action="store_true", help="print every task")
    p.set_defaults(func=cmd_teardown)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, project_root()))
    except HarnessError as exc:
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
