"""The one adapter around ansible-runner.

Every playbook and inventory query of the harness goes through here: a private data
directory per run, events streamed to a callback, a timeout, and success judged from
ansible-runner's status, rc and per-host stats, never from scraped stdout. ansible-core
2.19 may leave the fact cache empty, so whatever a caller needs from a play is taken
from the events (``set_stats`` and task results).
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from cvmharness.errors import PlaybookError

EventHandler = Callable[[dict[str, Any]], None]

_FAILED_EVENTS = {"runner_on_failed", "runner_on_unreachable"}


@dataclass(frozen=True)
class TaskFailure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def __str__(self) -> str:
        what = "unreachable" if self.unreachable else "failed"
        return f"{self.host}: task '{self.task}' {what}: {self.message}"


@dataclass
class PlaybookResult:
    playbook: str
    status: str
    rc: int
    failures: list[TaskFailure] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    changed: int = 0
    custom_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0 and not self.failures


def _failure_message(res: dict[str, Any]) -> str:
    for key in ("msg", "stderr", "reason", "module_stderr"):
        value = res.get(key)
        if value:
            text = str(value).strip()
            return text.splitlines()[-1] if key == "module_stderr" else " ".join(text.split())
    return json.dumps(res)[:300]


@dataclass
class AnsibleRunner:
    """Runs playbooks of one project directory against one inventory."""

    project_dir: Path
    inventory: Path
    become_password: str | None = None
    timeout_s: int = 3600
    keep_artifacts: Path | None = None

    def _env(self) -> dict[str, str]:
        return {
            "ANSIBLE_CONFIG": str(self.project_dir / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(self.project_dir / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # ansible-runner turns host key checking off unless told otherwise; a lab's
            # (and a guest's pinned) host keys are checked like any SSH connection's.
            "ANSIBLE_HOST_KEY_CHECKING": "True",
        }

    def run_playbook(
        self,
        playbook: str,
        extravars: dict[str, Any] | None = None,
        *,
        limit: str | None = None,
        tags: list[str] | None = None,
        on_event: EventHandler | None = None,
        timeout_s: int | None = None,
        check: bool = False,
    ) -> PlaybookResult:
        path = self.project_dir / "playbooks" / playbook
        failures: list[TaskFailure] = []
        changed = 0
        custom: dict[str, Any] = {}

        def handle(event: dict[str, Any]) -> bool:
            nonlocal changed
            data = event.get("event_data", {})
            name = event.get("event", "")
            if name in _FAILED_EVENTS and not data.get("ignore_errors"):
                res = data.get("res", {})
                failures.append(TaskFailure(
                    host=str(data.get("host", "?")),
                    task=str(data.get("task", "?")),
                    message=_failure_message(res if isinstance(res, dict) else {}),
                    unreachable=name == "runner_on_unreachable",
                ))
            elif name == "runner_on_ok" and data.get("res", {}).get("changed"):
                changed += 1
            elif name == "playbook_on_stats":
                custom.update(data.get("artifact_data", {}) or {})
            if on_event is not None:
                on_event(event)
            return True

        cmdline = ["--check"] if check else []
        passwords = {}
        if self.become_password is not None:
            cmdline.append("--ask-become-pass")
            passwords[r"^BECOME password.*:\s*?$"] = self.become_password
        private = Path(tempfile.mkdtemp(prefix="cvmharness-runner-"))
        # ansible-runner installs its own SIGINT/SIGTERM handlers and leaves them in
        # place; the bench loop's handlers (stop, keep what is done) must survive it.
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            result = ansible_runner.run(
                private_data_dir=str(private),
                project_dir=str(self.project_dir),
                playbook=str(path),
                inventory=str(self.inventory.resolve()),
                extravars=extravars or {},
                limit=limit,
                tags=",".join(tags) if tags else None,
                envvars=self._env(),
                cmdline=" ".join(cmdline) or None,
                passwords=passwords or None,
                quiet=True,
                event_handler=handle,
                timeout=timeout_s or self.timeout_s,
                suppress_env_files=True,
            )
            stats = result.stats or {}
            return PlaybookResult(
                playbook=playbook,
                status=str(result.status),
                rc=int(result.rc if result.rc is not None else -1),
                failures=failures,
                stats=stats,
                changed=changed,
                custom_stats=custom,
            )
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            if self.keep_artifacts is not None:
                self.keep_artifacts.mkdir(parents=True, exist_ok=True)
                shutil.copytree(private / "artifacts", self.keep_artifacts / playbook,
                                dirs_exist_ok=True)
            shutil.rmtree(private, ignore_errors=True)

    def run_or_raise(self, playbook: str, extravars: dict[str, Any] | None = None,
                     **kwargs: Any) -> PlaybookResult:
        result = self.run_playbook(playbook, extravars, **kwargs)
        if not result.ok:
            raise PlaybookError(describe_failure(result))
        return result

    def inventory_list(self) -> dict[str, Any]:
        """The inventory as ``ansible-inventory --list`` resolves it (groups, hostvars)."""
        out, err = ansible_runner.get_inventory(
            action="list",
            inventories=[str(self.inventory.resolve())],
            response_format="json",
            quiet=True,
            envvars={**self._env(), "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"},
        )
        if isinstance(out, dict):
            return out
        raise ValueError((err or str(out) or "ansible-inventory gave no output").strip())


def describe_failure(result: PlaybookResult) -> str:
    if result.failures:
        first = result.failures[0]
        more = len(result.failures) - 1
        tail = f" (and {more} more failure{'s' if more > 1 else ''})" if more else ""
        return f"{result.playbook}: {first}{tail}"
    if result.status == "timeout":
        return f"{result.playbook}: timed out"
    return f"{result.playbook}: ended with status {result.status}, rc {result.rc}"

