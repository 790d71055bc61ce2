"""sd_notify over a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiwm_agentd.notify import Notifier, sanitize_status


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # AF_UNIX path limit (108 bytes)
        path = Path(tempfile.mkdtemp(prefix="ntf")) / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def recv(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def nothing_pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


def test_ready_status_watchdog_stopping(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready("connected to controller")
    n.status("2 workers running")
    n.watchdog()
    n.reloading()
    n.stopping("shutting down")
    n.ready()
    assert recv(sock) == b"READY=1\nSTATUS=connected to controller\n"
    assert recv(sock) == b"STATUS=2 workers running\n"
    assert recv(sock) == b"WATCHDOG=1\n"
    assert recv(sock) == b"RELOADING=1\n"
    assert recv(sock) == b"STOPPING=1\nSTATUS=shutting down\n"
    assert recv(sock) == b"READY=1\n"
    assert nothing_pending(sock)
    n.close()


def test_status_utf8_and_watchdog_separate(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("Zürich – connecté ✓")
    n.watchdog()
    assert recv(sock) == "STATUS=Zürich – connecté ✓\n".encode()
    assert recv(sock) == b"WATCHDOG=1\n"
    n.close()


def test_newlines_sanitised(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("line one\nWATCHDOG=1\r\tend\n")
    assert recv(sock) == b"STATUS=line one WATCHDOG=1  end\n"
    assert nothing_pending(sock)
    n.close()


def test_sanitize_truncates():
    assert sanitize_status("x" * 500) == "x" * 200
    assert sanitize_status("  a\x00b\x1b  ") == "a b"


def test_env_keys_removed_from_mapping(listener):
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    n = Notifier(env)
    assert env == {"KEEP": "1"}
    assert n.watchdog_interval == 10.0
    n.close()


def test_abstract_socket_address():
    name = f"aiwm-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready("up")
        assert recv(sock) == b"READY=1\nSTATUS=up\n"
        n.close()
    finally:
        sock.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}])
def test_no_socket_is_noop(env):
    n = Notifier(env)
    assert not n.enabled
    n.ready("x")
    n.status("x")
    n.watchdog()
    n.stopping()
    n.close()


def test_send_to_vanished_socket_is_not_fatal(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    n.ready("x")
    n.watchdog()
    n.close()
    n.watchdog()  # after close: still a no-op


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "abc"}, None),
    ({}, None),
])
def test_watchdog_interval(env, interval):
    n = Notifier(dict(env))
    assert n.watchdog_interval == interval


def test_default_uses_os_environ(listener, monkeypatch):
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ
    n.watchdog()
    assert recv(sock) == b"WATCHDOG=1\n"
    n.close()
