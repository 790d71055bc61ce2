"""Cost of the sandbox's MCP route: `.venv/bin/python benchmarks/bench_mcp_route.py` (repository root).

A fake MCP server on 127.0.0.1 answers `initialize` (JSON); the same request is timed sent straight to it and
through the API proxy's `/mcp/<server>/...` route (token check, header swap, streamed answer), over a kept-alive
connection each, and the median and 95th percentile per request are printed (best of --rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiwm_agentd.sandbox.api_proxy import ApiProxy, Upstream
from aiwm_agentd.sandbox.mcp_routes import child_servers
from tests.fakes.mcp_server import FakeMcpServer

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln"
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})


def timed(url: str, token: str, count: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    samples: list[float] = []
    with requests.Session() as session:
        for _ in range(count + 10):
            start = time.perf_counter()
            answer = session.post(url, data=BODY, headers=headers, timeout=10)
            answer.raise_for_status()
            samples.append(time.perf_counter() - start)
    return samples[10:]  # the first few warm up the connection


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = FakeMcpServer().start()
    servers = {"Builtin": {"type": "http", "url": f"{server.url}/mcp", "headers": {"Authorization": f"Bearer {JWT}"}}}
    proxy = ApiProxy(Upstream("http://127.0.0.1:9", "sk-bench", "", servers))
    proxy.start()
    try:
        token = proxy.issue("bench")
        routed = child_servers(servers, token, proxy.url)["Builtin"]["url"]
        results: dict[str, tuple[float, float]] = {}
        for label, url, given in (("direct", f"{server.url}/mcp", JWT), ("through the proxy", routed, token)):
            best: tuple[float, float] | None = None
            for _ in range(args.rounds):
                samples = sorted(timed(url, given, args.requests))
                figures = (statistics.median(samples), samples[int(len(samples) * 0.95)])
                best = figures if best is None or figures[0] < best[0] else best
            assert best is not None
            results[label] = best
    finally:
        proxy.stop()
        server.stop()
    for label, (median, p95) in results.items():
        print(f"{label:>18}: median {median * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms per MCP request")
    extra = results["through the proxy"][0] - results["direct"][0]
    print(f"{'added':>18}: {extra * 1000:.2f} ms per request (median)")


if __name__ == "__main__":
    main()
