"""The /health server with 300 idle connections open: threads, /health latency, when the idle ones are closed.

    .venv/bin/python benchmarks/bench_health.py [--before dcd18fd] [--idle 300] [--requests 200]

"Before" is health.py as it was at the given commit (a thread per connection, no timeout), loaded from
`git show`; "after" is this tree's. Both run in this process on 127.0.0.1 with an ephemeral port. Latency is
a fresh connection + GET /health + full read, measured while the idle connections are held.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiwm_agentd import health  # noqa: E402


def old_health_module(commit: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{commit}:aiwm_agentd/health.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_health")
    exec(compile(source, f"{commit}:health.py", "exec"), module.__dict__)
    return module


def closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(max(within, 0.001))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def measure(server_class: Any, idle_count: int, requests: int, wait_closed: float) -> dict[str, Any]:
    server = server_class(("127.0.0.1", 0), lambda: {"healthy": True}, lambda: b"")
    server.start()
    address = server.address
    threads_before = threading.active_count()
    idle = [socket.create_connection(address, timeout=5) for _ in range(idle_count)]
    time.sleep(0.2)
    threads_with_idle = threading.active_count()
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(*address, timeout=10)
        conn.request("GET", "/health")
        conn.getresponse().read()
        conn.close()
        latencies.append(time.perf_counter() - started)
    opened = time.monotonic()
    deadline = opened + wait_closed
    still_open = sum(not closed(sock, deadline - time.monotonic()) for sock in idle)
    all_closed_after = time.monotonic() - opened if still_open == 0 else None
    for sock in idle:
        sock.close()
    started = time.perf_counter()
    server.stop()
    stop_seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "threads added by idle connections": threads_with_idle - threads_before,
        "/health p50 ms": round(statistics.median(latencies) * 1000, 2),
        "/health p99 ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "idle still open after wait": still_open,
        "all idle closed after s": None if all_closed_after is None else round(all_closed_after, 2),
        "stop() s": round(stop_seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="dcd18fd")
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    wait = health.REQUEST_TIMEOUT + 2
    print(f"{args.idle} idle connections, {args.requests} GET /health, idle closure awaited {wait:.0f} s")
    for name, server_class in (("before", old_health_module(args.before).HealthServer),
                               ("after", health.HealthServer)):
        for key, value in measure(server_class, args.idle, args.requests, wait).items():
            print(f"  {name:<6} {key:<36} {value}")


if __name__ == "__main__":
    main()
