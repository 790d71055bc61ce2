"""sd_notify(3) over the NOTIFY_SOCKET datagram socket, without the `sdnotify` package's pitfalls.

`sdnotify` silently drops a datagram holding any non-latin-1 character and leaves NOTIFY_SOCKET for
child processes. Here the socket address is taken out of the environment at start (children such as the
Claude CLI must not talk to systemd as us), status text is sanitised to one line of UTF-8, and the
watchdog ping always travels alone so a bad status can never take it down with it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

from aiwm_agentd import logs

log = logging.getLogger("aiwm_agentd.notify")

_MAX_STATUS = 200


def sanitize_status(text: str) -> str:
    """One printable line: newlines would be read by systemd as further assignments."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in logs.mask(text))
    return cleaned.strip()[:_MAX_STATUS]


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        watchdog_usec = env.pop("WATCHDOG_USEC", "")
        watchdog_pid = env.pop("WATCHDOG_PID", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval: float | None = None
        ours = not watchdog_pid or watchdog_pid == str(os.getpid())
        if watchdog_usec.isdigit() and int(watchdog_usec) > 0 and ours:
            self.watchdog_interval = int(watchdog_usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def _send(self, payload: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(payload.encode("utf-8"), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal for the daemon
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self._send("READY=1\n" + (f"STATUS={sanitize_status(status)}\n" if status else ""))

    def reloading(self) -> None:
        self._send("RELOADING=1\n")

    def status(self, text: str) -> None:
        self._send(f"STATUS={sanitize_status(text)}\n")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1\n")

    def stopping(self, status: str = "") -> None:
        self._send("STOPPING=1\n" + (f"STATUS={sanitize_status(status)}\n" if status else ""))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
