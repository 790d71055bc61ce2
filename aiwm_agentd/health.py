"""The /health (JSON) and /metrics (Prometheus text) endpoints: one thread, whatever the clients do.

A selector loop serves every connection, so an idle or stalled client costs a file descriptor, never a
thread (a thread per connection meant 300 idle connections = 302 threads, held forever). Each request must
arrive, and its answer leave, within `timeout` seconds counted from the connection (or from the end of the
previous answer on a keep-alive connection) -- not per byte, so a client sending one byte a second is cut
all the same. At most `max_connections` are open: a new connection evicts the one that has waited longest
for its request, so idle clients can never lock the scraper out, and the answer to a request is written by
the same thread without ever blocking it.

HTTP/1.1 keep-alive works as a Prometheus scraper expects; a keep-alive connection idle for longer than
`timeout` is closed and the scraper simply reconnects. The host may be IPv4, IPv6 ("::1", "::") or a name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from aiwm_agentd import logs
from aiwm_agentd.config import is_loopback_host

log = logging.getLogger("aiwm_agentd.health")

HealthSnapshot = Callable[[], dict[str, Any]]

REQUEST_TIMEOUT = 5.0  # seconds to receive a request and send its answer; also the keep-alive idle time
MAX_CONNECTIONS = 16  # a scraper or two and an operator's curl need a handful
MAX_HEAD_BYTES = 8192  # request line and headers; /health and /metrics take no body

_JSON = "application/json"
_LISTENER = "listener"
_WAKER = "waker"


class BadRequest(Exception):
    """A request the server answers with an error status and then closes the connection."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    keep_alive: bool


def find_head_end(buffer: bytes | bytearray) -> int | None:
    """The offset just past the blank line that ends a request head, or None while it is incomplete."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(sep)) != -1]
    return min(ends) if ends else None


def parse_request_head(head: bytes | bytearray) -> Request:
    """Request line and headers -> what to answer and whether the connection stays open afterwards."""
    lines = bytes(head).decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequest(HTTPStatus.BAD_REQUEST)
        headers[name.strip().lower()] = value.strip()
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    if headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in headers:
        keep_alive = False  # a body is never read: the bytes after the head are not a next request
    return Request(method=method, path=target.split("?", 1)[0], keep_alive=keep_alive)


def render_response(status: HTTPStatus, body: bytes, content_type: str, *, keep_alive: bool,
                    head_only: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    headers = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class _Connection:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbox = bytearray()
        self.outbox = b""
        self.sent = 0
        self.close_after_answer = False

    @property
    def answering(self) -> bool:
        return self.sent < len(self.outbox)


def _bind(addr: tuple[str, int]) -> socket.socket:
    """A listening, non-blocking socket of the family the host calls for (IPv4, IPv6, or a name's first)."""
    host, port = addr
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and _is_unspecified(host):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" = every address, as 0.0.0.0
        sock.bind(sockaddr)
        sock.listen()
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class HealthServer:
    """Binds at construction, so a taken port is reported at start-up, not in a thread."""

    def __init__(self, addr: tuple[str, int], snapshot: HealthSnapshot, metrics: Callable[[], bytes], *,
                 timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not is_loopback_host(addr[0]):
            log.warning("AIWM_HEALTH_ADDR %s:%s is not loopback: /health and /metrics are reachable "
                        "from the network", addr[0], addr[1])
        self._snapshot = snapshot
        self._metrics = metrics
        self._timeout = timeout
        self._max_connections = max(1, max_connections)
        self._clock = clock
        self._listener = _bind(addr)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKER)
        self._connections: dict[int, _Connection] = {}
        self._stopping = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="health", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close the listener and every connection; returns within milliseconds."""
        self._stopping = True
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
            self._thread.join(1.0)
        self._close_all()

    # -- the loop (health thread) ---------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            try:
                events = self._selector.select(self._wait_time())
            except (OSError, ValueError):  # the selector was closed under us
                return
            for key, mask in events:
                if key.data == _LISTENER:
                    self._accept()
                elif key.data == _WAKER:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(64)
                elif isinstance(key.data, _Connection):
                    self._serve_connection(key.data, mask)
            self._expire()

    def _wait_time(self) -> float | None:
        if not self._connections:
            return None
        return max(0.0, min(c.deadline for c in self._connections.values()) - self._clock())

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again at the next wake-up
                log.warning("health endpoint: accept failed: %s", exc)
                return
            if len(self._connections) >= self._max_connections and not self._evict_oldest_waiting():
                sock.close()
                continue
            sock.setblocking(False)
            connection = _Connection(sock, self._clock() + self._timeout)
            self._connections[sock.fileno()] = connection
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _evict_oldest_waiting(self) -> bool:
        """Make room by closing the connection that has waited longest for its request."""
        waiting = [c for c in self._connections.values() if not c.answering]
        if not waiting:
            return False
        self._close(min(waiting, key=lambda c: c.deadline))
        return True

    def _expire(self) -> None:
        now = self._clock()
        for connection in [c for c in self._connections.values() if c.deadline <= now]:
            self._close(connection)

    def _serve_connection(self, connection: _Connection, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                self._receive(connection)
            if mask & selectors.EVENT_WRITE and connection.sock.fileno() in self._connections:
                self._send(connection)
        except OSError:  # reset by the peer, broken pipe: nothing to answer any more
            self._close(connection)
        except Exception:
            log.exception("health endpoint: connection handling failed")
            self._close(connection)

    def _receive(self, connection: _Connection) -> None:
        data = connection.sock.recv(65536)
        if not data:
            self._close(connection)
            return
        connection.inbox += data
        self._answer_next(connection)

    def _answer_next(self, connection: _Connection) -> None:
        """If a whole request head is in, queue its answer and switch the connection to writing."""
        end = find_head_end(connection.inbox)
        if end is None:
            if len(connection.inbox) > MAX_HEAD_BYTES:
                self._queue(connection, self._error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE), close=True)
            return
        head, connection.inbox = connection.inbox[:end], connection.inbox[end:]
        try:
            request = parse_request_head(head)
        except BadRequest as exc:
            self._queue(connection, self._error(exc.status), close=True)
            return
        self._queue(connection, self._respond(request), close=not request.keep_alive)

    def _queue(self, connection: _Connection, response: bytes, *, close: bool) -> None:
        connection.outbox, connection.sent = response, 0
        connection.close_after_answer = close
        self._selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        self._send(connection)

    def _send(self, connection: _Connection) -> None:
        try:
            connection.sent += connection.sock.send(connection.outbox[connection.sent:])
        except (BlockingIOError, InterruptedError):
            return
        if connection.answering:
            return
        if connection.close_after_answer:
            self._close(connection)
            return
        connection.outbox, connection.sent = b"", 0
        connection.deadline = self._clock() + self._timeout
        self._selector.modify(connection.sock, selectors.EVENT_READ, connection)
        self._answer_next(connection)  # a pipelined request may already be waiting

    def _respond(self, request: Request) -> bytes:
        keep_alive = request.keep_alive
        if request.method not in ("GET", "HEAD"):
            return render_response(HTTPStatus.METHOD_NOT_ALLOWED, b'{"error": "method not allowed"}\n', _JSON,
                                   keep_alive=keep_alive, extra=(("Allow", "GET, HEAD"),))
        head_only = request.method == "HEAD"
        try:
            if request.path == "/health":
                snap = self._snapshot()
                status = HTTPStatus.OK if snap.get("healthy") else HTTPStatus.SERVICE_UNAVAILABLE
                # Masked as a backstop: nothing secret belongs in the snapshot in the first place.
                body = logs.mask(json.dumps(snap, indent=2, default=str)).encode() + b"\n"
                return render_response(status, body, _JSON, keep_alive=keep_alive, head_only=head_only)
            if request.path == "/metrics":
                return render_response(HTTPStatus.OK, self._metrics(), CONTENT_TYPE_LATEST, keep_alive=keep_alive,
                                       head_only=head_only)
            return render_response(HTTPStatus.NOT_FOUND, b'{"error": "not found"}\n', _JSON, keep_alive=keep_alive,
                                   head_only=head_only)
        except Exception:
            log.exception("health endpoint failed")
            return render_response(HTTPStatus.INTERNAL_SERVER_ERROR, b'{"error": "internal error"}\n', _JSON,
                                   keep_alive=keep_alive, head_only=head_only)

    @staticmethod
    def _error(status: HTTPStatus) -> bytes:
        body = json.dumps({"error": status.phrase.lower()}).encode() + b"\n"
        return render_response(status, body, _JSON, keep_alive=False)

    def _close(self, connection: _Connection) -> None:
        fd = connection.sock.fileno()
        if fd != -1 and self._connections.pop(fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(connection.sock)
        connection.sock.close()

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for connection in list(self._connections.values()):
            self._close(connection)
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()
        self._selector.close()
