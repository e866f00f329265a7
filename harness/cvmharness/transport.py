"""Running a command on a lab node, for the measured part of a cell.

Playbooks prepare the lab; the measured loop does not go through Ansible, whose start-up
alone costs seconds per task. A cell runs its client through a Transport: a subprocess on
this machine for ``ansible_connection: local``, or one persistent SSH connection
(ControlMaster) per node otherwise, with the same host, user, port, key and
ProxyJump arguments that Ansible uses for it.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cvmharness.lab import LabHost


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False


class Transport(Protocol):
    @property
    def node(self) -> str: ...

    def run(self, argv: list[str], timeout_s: float) -> Completed: ...

    def close(self) -> None: ...


_LIVE: set[int] = set()
"""Process groups of commands in flight, killed when the harness is interrupted."""


def kill_live_processes() -> None:
    for pgid in list(_LIVE):
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        _LIVE.discard(pgid)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the harness dies, even by SIGKILL.

    A load generator left running by a killed harness would send its requests into the
    next (resumed) measurement and corrupt its server-side count.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _run(argv: list[str], timeout_s: float) -> Completed:
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    _LIVE.add(proc.pid)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        _LIVE.discard(proc.pid)
    return Completed(tuple(argv), proc.returncode, out, err, time.monotonic() - started,
                     timed_out)


@dataclass
class LocalTransport:
    node: str

    def run(self, argv: list[str], timeout_s: float) -> Completed:
        return _run(argv, timeout_s)

    def close(self) -> None:
        return None


@dataclass
class SshTransport:
    """One multiplexed SSH connection to a node, opened on first use."""

    host: LabHost
    known_hosts: Path | None = None
    _control_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cvmh-ssh-")))

    @property
    def node(self) -> str:
        return self.host.name

    def _base(self) -> list[str]:
        v = self.host.vars
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=auto",
                "-o", f"ControlPath={self._control_dir}/%C", "-o", "ControlPersist=300"]
        if self.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if v.ansible_port:
            argv += ["-p", str(v.ansible_port)]
        if v.ansible_ssh_private_key_file:
            argv += ["-i", v.ansible_ssh_private_key_file]
        if v.ansible_ssh_common_args:
            argv += shlex.split(v.ansible_ssh_common_args)
        target = v.ansible_host or self.host.name
        if v.ansible_user:
            target = f"{v.ansible_user}@{target}"
        return [*argv, target]

    def run(self, argv: list[str], timeout_s: float) -> Completed:
        return _run([*self._base(), "--", shlex.join(argv)], timeout_s)

    def close(self) -> None:
        subprocess.run([*self._base()[:-1], "-O", "exit", self._base()[-1]],
                       capture_output=True, check=False, timeout=10)


def transport_for(host: LabHost) -> Transport:
    if host.is_local:
        return LocalTransport(node=host.name)
    return SshTransport(host=host)
