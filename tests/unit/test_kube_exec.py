"""PodExecTransport's success path: wrk's output read back through the exec API.

Why a mock API server: exec needs a kubelet behind the pod, and the real kube-apiserver
of tests/k8senv has none (kwok fakes pods; exec there fails, which
tests/k8senv/test_kube.py checks). kmock (0.8) serves HTTP and watch streams but no
WebSocket upgrade, so this is a minimal aiohttp server on 127.0.0.1 that speaks the
exec endpoint's `v4.channel.k8s.io` protocol: one byte of channel (1 stdout, 2 stderr,
3 status) before each frame, and a Status object on channel 3 at the end.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvmharness.kube import PodExecTransport
from cvmharness.workloads.wrk import parse_wrk_json

kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes")
web = pytest.importorskip("aiohttp.web", reason="aiohttp comes with kubernetes")

SUCCESS = {"metadata": {}, "status": "Success"}


def exit_status(code: int) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


class ExecServer:
    """Answers every exec with the frames of ``self.reply``; records the commands."""

    def __init__(self) -> None:
        self.reply: list[tuple[int, bytes]] = []
        self.commands: list[list[str]] = []
        self.paths: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _exec(self, request: Any) -> Any:
        self.paths.append(request.path)
        self.commands.append(request.query.getall("command"))
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        for channel, data in self.reply:
            await ws.send_bytes(bytes([channel]) + data)
        await ws.close()
        return ws

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{pod}/exec", self._exec)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture
def server() -> Iterator[ExecServer]:
    srv = ExecServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def transport(server: ExecServer) -> Iterator[PodExecTransport]:
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{server.port}"
    config.proxy = None
    api = kubernetes.client.ApiClient(config)
    try:
        yield PodExecTransport(api, "cvmh-run", "wrk-kata-qemu-abc123")
    finally:
        api.close()


def test_wrk_output_comes_back_whole_and_parses(server: ExecServer,
                                                transport: PodExecTransport,
                                                data: Path) -> None:
    text = (data / "wrk_json" / "host-local-c16.txt").read_bytes()
    half = len(text) // 2
    server.reply = [(1, text[:half]), (2, b"a warning\n"), (1, text[half:]),
                    (3, json.dumps(SUCCESS).encode())]
    argv = ["/usr/local/bin/wrk", "-t2", "-c16", "-d3s", "-s",
            "/usr/local/share/cvmharness/wrk_json.lua", "http://10.96.0.10:80/"]
    done = transport.run(argv, 60)
    assert (done.rc, done.timed_out) == (0, False)
    assert done.stdout == text.decode()
    assert done.stderr == "a warning\n"
    assert parse_wrk_json(done.stdout).requests > 0
    assert server.commands == [argv]
    assert server.paths == ["/api/v1/namespaces/cvmh-run/pods/wrk-kata-qemu-abc123/exec"]


def test_exit_code_comes_from_the_status_channel(server: ExecServer,
                                                 transport: PodExecTransport) -> None:
    server.reply = [(2, b"unable to connect to 10.96.0.10:80 Connection refused\n"),
                    (3, json.dumps(exit_status(1)).encode())]
    done = transport.run(["wrk", "http://10.96.0.10:80/"], 60)
    assert done.rc == 1
    assert "Connection refused" in done.stderr


def test_a_failure_without_exit_code_is_255_with_the_status(
        server: ExecServer, transport: PodExecTransport) -> None:
    server.reply = [(3, json.dumps({"status": "Failure", "reason": "InternalError",
                                    "message": 'exec: "wrk": executable file not found'})
                     .encode())]
    done = transport.run(["wrk", "-v"], 60)
    assert done.rc == 255
    assert 'executable file not found' in done.stderr
    assert transport.node in done.stderr
