"""Controller calls against real loopback servers: one overall deadline, abort, no trust in the environment."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from aiwm_agentd.controller.calls import CallRunner
from aiwm_agentd.controller.client import ControllerClient, ControllerError, proxies_from_env

AGENT = "a" * 24


class DripServer:
    """Accepts connections and sends one header line every `interval` seconds, forever (a stalled proxy)."""

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed_by_peer = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            n = 0
            while not self._stop.is_set():
                time.sleep(self.interval)
                conn.sendall(f"X-Drip-{n}: {n}\r\n".encode())
                n += 1
        except OSError:
            self.closed_by_peer.set()
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with `{}` and records the request line and headers."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Recorder.seen.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_dripping_server_cannot_hold_a_call_past_its_deadline(drip: DripServer) -> None:
    # Each header line arrives well within the socket timeout, so only an overall deadline ends the call.
    client = ControllerClient(f"http://127.0.0.1:{drip.port}", AGENT, "secret", timeout=1.0)
    woken = threading.Event()
    calls: CallRunner[str] = CallRunner(woken.set)
    started = time.monotonic()
    calls.start("heartbeat", client, lambda deadline: client.heartbeat("tok", "idle", {}, deadline), 1.0)
    assert calls.collect() is None  # running; the caller is not blocked
    finished = None
    while finished is None and time.monotonic() - started < 5:
        finished = calls.collect()
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert finished is not None
    outcome = finished[1]
    assert isinstance(outcome, ControllerError) and outcome.kind == "timeout"
    assert elapsed < 1.5
    # The abort cut the socket: the server sees the connection go, the call's thread does not linger.
    assert drip.closed_by_peer.wait(3)
    deadline = time.monotonic() + 3
    while any(t.name == "controller-call" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "controller-call" for t in threading.enumerate())


def test_a_call_past_its_deadline_is_aborted_even_without_the_clients_own_check(drip: DripServer) -> None:
    client = ControllerClient(f"http://127.0.0.1:{drip.port}", AGENT, "secret", timeout=30.0)
    calls: CallRunner[str] = CallRunner(lambda: None)
    # The client is told it has 30 s; the runner's deadline (0.5 s) is what ends it.
    calls.start("connect", client, lambda _deadline: client.connect(time.monotonic() + 30), 0.5)
    finished = calls.wait(time.monotonic() + 5)
    assert finished is not None
    outcome = finished[1]
    assert isinstance(outcome, ControllerError) and outcome.kind == "timeout"
    assert drip.closed_by_peer.wait(3)


def test_an_unexpected_exception_in_a_call_becomes_a_failure_not_a_hang() -> None:
    client = ControllerClient("http://127.0.0.1:9", AGENT, "secret")
    woken = threading.Event()
    calls: CallRunner[str] = CallRunner(woken.set)

    def broken(_deadline: float) -> object:
        raise KeyError("bug")

    calls.start("connect", client, broken, 5.0)
    assert woken.wait(2)
    finished = calls.collect()
    assert finished is not None and isinstance(finished[1], ControllerError)
    with pytest.raises(RuntimeError):  # one call at a time: misuse is loud
        calls.start("a", client, broken, 1.0)
        calls.start("b", client, broken, 1.0)


def test_netrc_in_home_does_not_replace_the_bearer_header(recorder: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login intruder password from-netrc\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    ControllerClient(recorder, AGENT, "secret").heartbeat("the-agent-token", "idle", {})
    _line, headers = Recorder.seen[-1]
    assert headers["authorization"] == "Bearer the-agent-token"


def test_environment_proxies_are_ignored_unless_passed(recorder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the process environment is not used implicitly...
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "")
    ControllerClient(recorder, AGENT, "secret").heartbeat("tok", "idle", {})
    assert Recorder.seen[-1][0].startswith("POST /agents/")
    # ...but one passed explicitly (from the env file) is: the recorder acts as the proxy here.
    proxies, no_proxy = proxies_from_env({"HTTP_PROXY": recorder, "no_proxy": "example.invalid"})
    assert proxies == {"http": recorder} and no_proxy == "example.invalid"
    client = ControllerClient("http://controller.example:8080", AGENT, "secret", proxies=proxies,
                              no_proxy=no_proxy)
    client.heartbeat("tok", "idle", {})
    line, _headers = Recorder.seen[-1]
    assert line.startswith(f"POST http://controller.example:8080/agents/{AGENT}/heartbeat")
    # NO_PROXY naming the controller bypasses the proxy.
    bypassed = ControllerClient("http://controller.example:8080", AGENT, "secret", proxies=proxies,
                                no_proxy="controller.example")
    with pytest.raises(ControllerError) as failure:
        bypassed.heartbeat("tok", "idle", {}, deadline=time.monotonic() + 3)
    assert failure.value.kind in ("network", "timeout")
