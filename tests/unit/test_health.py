"""The /health server against real sockets on loopback: answers, keep-alive, idle and slow clients, IPv6, stop."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aiwm_agentd.health import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    BadRequest,
    HealthServer,
    find_head_end,
    parse_request_head,
)

SNAPSHOT: dict[str, Any] = {"healthy": True, "state": "connected"}


def _metrics() -> bytes:
    return b"aiwm_connection_success_total 3.0\n"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def serve() -> Iterator[Callable[..., HealthServer]]:
    servers: list[HealthServer] = []

    def start(host: str = "127.0.0.1", snapshot: Callable[[], dict[str, Any]] = lambda: SNAPSHOT,
              metrics: Callable[[], bytes] = _metrics, **options: Any) -> HealthServer:
        server = HealthServer((host, 0), snapshot, metrics, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _get(server: HealthServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- Pure request parsing ------------------------------------------------------------------------------------


def test_head_end_needs_the_blank_line() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    assert find_head_end(b"GET / HTTP/1.1\r\n\r\nGET") == 18
    assert find_head_end(b"GET / HTTP/1.0\n\n") == 16


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET /health HTTP/1.0\r\n\r\n", False),
    (b"GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    (b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\n", False),
    (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
])
def test_keep_alive_follows_the_http_version_and_headers(head: bytes, keep_alive: bool) -> None:
    request = parse_request_head(head)
    assert (request.method, request.path, request.keep_alive) == ("GET", "/health", keep_alive)


def test_query_string_is_not_part_of_the_path() -> None:
    assert parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n").path == "/metrics"


@pytest.mark.parametrize("head", [b"GET /health\r\n\r\n", b"GET /health HTTP/2\r\n\r\n",
                                  b"hello\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"])
def test_malformed_heads_are_bad_requests(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request_head(head)


def test_defaults_are_a_few_seconds_and_a_small_cap() -> None:
    assert 2 <= REQUEST_TIMEOUT <= 10
    assert 8 <= MAX_CONNECTIONS <= 64


# --- Answers ---------------------------------------------------------------------------------------------------


def test_health_metrics_and_unknown_paths(serve) -> None:
    state = {"healthy": True, "secret_free": "yes"}
    server = serve(snapshot=lambda: dict(state))
    status, headers, body = _get(server, "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == state and headers["cache-control"] == "no-store"
    state["healthy"] = False
    assert _get(server, "/health")[0] == 503
    status, headers, body = _get(server, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain") and body == _metrics()
    assert _get(server, "/nope")[0] == 404
    status, headers, body = _get(server, "/health", "HEAD")
    assert status == 503 and body == b"" and int(headers["content-length"]) > 0
    status, headers, _ = _get(server, "/health", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_failing_snapshot_answers_500_and_the_server_goes_on(serve) -> None:
    calls = 0

    def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return SNAPSHOT

    server = serve(snapshot=snapshot)
    assert _get(server, "/health")[0] == 500
    assert _get(server, "/health")[0] == 200


def test_keep_alive_serves_several_requests_on_one_connection(serve) -> None:
    server = serve()
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    sockets = []
    try:
        for path in ("/health", "/metrics", "/health"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") == "keep-alive"
            response.read()
            sockets.append(conn.sock)
        # http.client reconnects when the server closes: one socket object means one connection.
        assert sockets[0] is not None and sockets == [sockets[0]] * 3
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(serve) -> None:
    server = serve()
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404 Not Found\r\n" in received


def test_a_large_answer_is_written_whole(serve) -> None:
    big = b"".join(b"aiwm_metric_%d 1.0\n" % i for i in range(500_000))  # ~11 MB: many partial sends
    server = serve(metrics=lambda: big)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        time.sleep(0.1)  # the server's first send fills the buffers; the rest must go out as we read
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.endswith(b"\r\n\r\n" + big)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 9000, b"431"),
])
def test_bad_and_oversized_requests_are_refused_and_closed(serve, request_bytes: bytes, status: bytes) -> None:
    server = serve()
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(request_bytes)
        received = sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 " + status)
        assert b"Connection: close" in received
    assert _get(server, "/health")[0] == 200


# --- Idle, slow and too many clients ---------------------------------------------------------------------------


def test_300_idle_connections_cost_no_thread_and_do_not_block_health(serve) -> None:
    timeout = 1.0
    server = serve(timeout=timeout)
    assert _get(server, "/health")[0] == 200
    threads_before = threading.active_count()
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(300)]
    try:
        time.sleep(0.1)  # let the server accept them all
        assert threading.active_count() == threads_before
        started = time.monotonic()
        assert _get(server, "/health")[0] == 200
        assert time.monotonic() - started < timeout / 2  # answered at once, not after the idle ones expire
        assert threading.active_count() == threads_before
        # Every idle connection is closed: the oldest evicted to make room, the rest at their timeout.
        deadline = time.monotonic() + timeout + 1.5
        assert all(_closed_by_server(sock, max(0.01, deadline - time.monotonic())) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    assert _get(server, "/health")[0] == 200


def test_idle_connections_under_the_cap_are_closed_at_the_timeout(serve) -> None:
    timeout = 0.6
    server = serve(timeout=timeout, max_connections=16)
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(5)]
    try:
        opened = time.monotonic()
        assert not any(_closed_by_server(sock, 0.01) for sock in idle)  # still open well before the timeout
        assert all(_closed_by_server(sock, timeout + 1.0) for sock in idle)
        assert time.monotonic() - opened >= timeout * 0.8
    finally:
        for sock in idle:
            sock.close()


def test_a_new_connection_evicts_the_longest_waiting_one(serve) -> None:
    server = serve(max_connections=2)
    first = socket.create_connection(server.address, timeout=5)
    time.sleep(0.05)
    second = socket.create_connection(server.address, timeout=5)
    try:
        time.sleep(0.05)
        assert _get(server, "/health")[0] == 200
        assert _closed_by_server(first, 1.0)
        assert not _closed_by_server(second, 0.05)
    finally:
        first.close()
        second.close()


def test_slowloris_request_is_cut_at_the_timeout(serve) -> None:
    """One byte every 0.2 s: each byte is well within the timeout, the whole request is not."""
    timeout = 1.0
    server = serve(timeout=timeout)
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"
    with socket.create_connection(server.address, timeout=5) as sock:
        opened = time.monotonic()
        cut_after = None
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut_after = time.monotonic() - opened
                break
            if _closed_by_server(sock, 0.2):
                cut_after = time.monotonic() - opened
                break
    assert cut_after is not None, "the slow request was answered instead of cut"
    assert timeout * 0.8 <= cut_after <= timeout + 1.0


# --- IPv6 and stop ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not _ipv6_loopback(), reason="this kernel has no IPv6 loopback")
def test_ipv6_loopback_bind_and_get(serve) -> None:
    server = serve(host="::1")
    host, port = server.address
    assert host == "::1" and port > 0
    status, _, body = _get(server, "/health")
    assert status == 200 and json.loads(body) == SNAPSHOT
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # "::1" is IPv6 only


def test_stop_is_quick_with_clients_connected(serve) -> None:
    server = serve()
    host, port = server.address
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(10)]
    keep = http.client.HTTPConnection(host, port, timeout=5)
    keep.request("GET", "/health")
    keep.getresponse().read()
    try:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.5
        assert all(_closed_by_server(sock, 1.0) for sock in idle)
        with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
            pass
        server.stop()  # twice is harmless
    finally:
        keep.close()
        for sock in idle:
            sock.close()


def test_a_taken_port_fails_at_construction() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            HealthServer(taken.getsockname(), lambda: SNAPSHOT, _metrics)
