"""The /health (JSON) and /metrics (Prometheus text) endpoints, served from a daemon thread."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from aiwm_agentd.config import is_loopback_host

log = logging.getLogger("aiwm_agentd.health")

HealthSnapshot = Callable[[], dict[str, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], snapshot: HealthSnapshot, metrics: Callable[[], bytes]) -> None:
        self.snapshot = snapshot
        self.metrics = metrics
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/health":
                snap = self.server.snapshot()
                status = 200 if snap.get("healthy") else 503
                self._send(status, json.dumps(snap, indent=2, default=str).encode() + b"\n", "application/json")
            elif path == "/metrics":
                self._send(200, self.server.metrics(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error": "not found"}\n', "application/json")
        except Exception:
            log.exception("health endpoint failed")
            self._send(500, b'{"error": "internal error"}\n', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health: " + format, *args)


class HealthServer:
    """Binds at construction, so a taken port is reported at start-up, not in a thread."""

    def __init__(self, addr: tuple[str, int], snapshot: HealthSnapshot, metrics: Callable[[], bytes]) -> None:
        if not is_loopback_host(addr[0]):
            log.warning("AIWM_HEALTH_ADDR %s:%s is not loopback: /health and /metrics are reachable "
                        "from the network", addr[0], addr[1])
        self._server = _Server(addr, snapshot, metrics)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="health", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            stopper = threading.Thread(target=self._server.shutdown, daemon=True)
            stopper.start()
            # serve_forever notices the request only at its next poll; a connection wakes it now.
            with contextlib.suppress(OSError), socket.create_connection(self.address, timeout=0.2):
                pass
            stopper.join(1.0)
        self._server.server_close()
