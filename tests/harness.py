"""Run the real daemon as a subprocess, with a real NOTIFY_SOCKET, for integration and e2e tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; records every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def first(self, field: str) -> float | None:
        for at, text in list(self.messages):
            if any(line == field or line.startswith(field + "=") for line in text.splitlines()):
                return at
        return None

    def lines(self) -> list[str]:
        return [line for _, text in list(self.messages) for line in text.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def write_env(path: Path, values: Mapping[str, Any]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    path.chmod(0o600)
    return path


class Daemon:
    """`python -m aiwm_agentd run --env-file F` with output captured to files (no pipe back-pressure)."""

    def __init__(self, tmp: Path, env_values: Mapping[str, Any], watchdog_usec: int | None = None,
                 extra_env: Mapping[str, str] | None = None, notify: bool = True) -> None:
        self.tmp = tmp
        self.health_port = free_port()
        values = {"AIWM_STATE_DIR": tmp / "state", "AIWM_HEALTH_ADDR": f"127.0.0.1:{self.health_port}"}
        values.update(env_values)
        self.env_file = write_env(tmp / "agent.env", values)
        self.notify = NotifyListener(tmp / "notify.sock") if notify else None
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        if self.notify:
            env["NOTIFY_SOCKET"] = self.notify.path
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        env.update(extra_env or {})
        self.stdout_path = tmp / "daemon.stdout"
        self.stderr_path = tmp / "daemon.stderr"
        self.started = time.monotonic()
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aiwm_agentd", "run", "--env-file", str(self.env_file)],
                stdout=out, stderr=err, env=env, cwd=str(ROOT),
            )

    # -- observation ------------------------------------------------------------------------------

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        regex = re.compile(pattern)
        return wait_for(lambda: regex.search(self.output()), timeout, 0.05, what=f"log {pattern!r}")  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 15.0) -> float:
        assert self.notify is not None
        wait_for(lambda: (self.notify and self.notify.first("READY")) or self.proc.poll() is not None, timeout,
                 what="READY=1")
        assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.output()}"
        at = self.notify.first("READY")
        assert at is not None
        return at - self.started

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.health_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 503 when unhealthy still carries the JSON
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5) as response:
            return response.read().decode()

    # -- control ----------------------------------------------------------------------------------

    def update_env(self, **changes: Any) -> None:
        lines = self.env_file.read_text().splitlines()
        current = dict(line.split("=", 1) for line in lines if "=" in line)
        current.update({k: str(v) for k, v in changes.items()})
        write_env(self.env_file, current)

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.notify:
            self.notify.close()


MakeDaemon = Callable[..., Daemon]  # the `daemon` fixture (tests/integration/conftest.py)


def controller_env(ctl: Any, **overrides: Any) -> dict[str, Any]:
    """The env lines an agent needs for a (Faulty)DevController, plus fast test intervals."""
    values: dict[str, Any] = {
        "AIWM_ENABLED": "true",
        "AIWM_BASE_URL": ctl.url,
        "AIWM_AGENT_ID": ctl.agent_id,
        "AIWM_AGENT_SECRET": ctl.secret,
        "AGENT_NAME": "Test Agent",
        "AIWM_HEARTBEAT_INTERVAL": "0.3",
        "AIWM_REQUEST_TIMEOUT": "2",
        "AIWM_FALLBACK_RETRY_INTERVAL": "1",
        "LOG_LEVEL": "INFO",
    }
    values.update(overrides)
    return values


JWT_HEADER_B64 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # every HS256 token the dev controller issues


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret and secret not in text, "a secret value leaked into the output"
    assert JWT_HEADER_B64 not in text, "a JWT leaked into the output"
