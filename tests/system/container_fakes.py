"""The project's loopback fakes (tests/fakes) served inside a booted container's network namespace.

The container has its own loopback (`--private-network`), so a fake on the host's 127.0.0.1 is out of the
agent's reach. A network namespace is per thread on Linux and inherited by the threads a thread creates: a
helper thread joins the container's namespace (setns) and starts the fakes there, so their listening
sockets are on the container's 127.0.0.1 while the fakes themselves stay objects of the test process (their
recorded requests and controls are read directly, no RPC into the container). Needs root, like the rest
of the system test.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.fakes.telegram import FakeTelegram

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def in_netns(pid: int, start: Callable[[], T]) -> T:
    """Run `start` in a fresh thread that joined the network namespace of `pid` (a host pid, e.g. the
    container's init); the sockets and threads it creates stay in that namespace after it returns."""
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: dict[str, Any] = {}

    def enter_and_start() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into the network namespace of {pid}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            outcome["value"] = start()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_start, name=f"netns-{pid}", daemon=True)
    thread.start()
    thread.join(30)
    if "error" in outcome:
        raise outcome["error"]
    if "value" not in outcome:
        raise AssertionError(f"starting a fake in the network namespace of {pid} did not finish in 30 s")
    return outcome["value"]  # type: ignore[no-any-return]


class TimedTelegram(FakeTelegram):
    """FakeTelegram that also notes when each sendMessage arrived (time.monotonic(), the same clock as
    systemd's *TimestampMonotonic in the container: nspawn shares the kernel's monotonic clock)."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.sent_at: list[float] = []  # parallel to `sent`

    def _send_message(self, params: dict[str, Any]) -> Any:
        arrived = time.monotonic()
        before = len(self.sent)
        response = super()._send_message(params)
        if len(self.sent) > before:  # not a rate-limited call
            self.sent_at.append(arrived)
        return response

    def texts(self) -> list[str]:
        return [str(m.get("text", "")) for m in list(self.sent)]
