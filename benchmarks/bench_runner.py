"""Figures for the Claude runner: `.venv/bin/python benchmarks/bench_runner.py` (from the repository root).

- first-turn and follow-up-turn latency in one conversation against the fake API (real SDK + bundled CLI);
- runner overhead per message with a stub in place of the SDK client (queueing, thread hand-off, futures);
- RSS of this process (the daemon's share) and of each CLI child;
- 20 messages over 5 conversations with a concurrency cap of 2.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiwm_agentd.runner import ClaudeRunner
from aiwm_agentd.workers import ConversationKey
from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest, agent_config

MIB = 1024 * 1024


def rss_mib(process: psutil.Process | None = None) -> float:
    return (process or psutil.Process()).memory_info().rss / MIB


def claude_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "claude"]


class StubClient:
    """Answers at once: what is left is the runner's own cost."""

    def __init__(self, options: Any) -> None:
        self.text = ""

    async def connect(self) -> None:
        pass

    async def query(self, text: str) -> None:
        self.text = text

    async def receive_response(self) -> AsyncIterator[Any]:
        from claude_agent_sdk import ResultMessage, SystemMessage

        yield SystemMessage("init", {"session_id": "stub"})
        yield ResultMessage(subtype="success", duration_ms=0, duration_api_ms=0, is_error=False, num_turns=1,
                            session_id="stub", result=self.text)

    async def interrupt(self) -> None:
        pass

    async def disconnect(self) -> None:
        await asyncio.sleep(0)


def bench_overhead(state: Path, count: int) -> float:
    runner = ClaudeRunner(agent_config(state / "stub", "http://127.0.0.1:9"))
    runner.client_factory = StubClient
    runner.start()
    key = ConversationKey("bench", "stub")
    try:
        runner.submit(key, "warm-up").result(30)
        started = time.perf_counter()
        for n in range(count):
            runner.submit(key, f"m{n}").result(10)
        return (time.perf_counter() - started) / count
    finally:
        runner.stop(time.monotonic() + 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--follow-ups", type=int, default=10)
    parser.add_argument("--fake-delay", type=float, default=0.0, help="the fake API's own time per reply (s)")
    args = parser.parse_args()

    rss_start = rss_mib()
    fake = FakeAnthropic().start()

    def reply(request: RecordedRequest) -> FakeReply:
        return FakeReply(text=f"echo: {request.last_user_text}", delay=args.fake_delay)

    fake.set_handler(reply)
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        state = Path(tmp)
        overhead = bench_overhead(state, 200)
        rss_after_import = rss_mib()

        runner = ClaudeRunner(agent_config(state / "real", fake.url, max_concurrency=2, max_clients=4))
        runner.start()
        key = ConversationKey("bench", "latency")
        try:
            started = time.perf_counter()
            first = runner.submit(key, "first").result(120)
            first_latency = time.perf_counter() - started
            follow: list[float] = []
            for n in range(args.follow_ups):
                started = time.perf_counter()
                assert runner.submit(key, f"follow {n}").result(60).error == ""
                follow.append(time.perf_counter() - started)
            child_rss = [rss_mib(p) for p in claude_children()]
            daemon_rss_one_client = rss_mib()

            keys = [ConversationKey("bench", f"c{i}") for i in range(5)]
            started = time.perf_counter()
            futures = [runner.submit(k, f"{k.chat_id} {n}") for n in range(4) for k in keys]
            replies = [f.result(300) for f in futures]
            burst = time.perf_counter() - started
            failed = sum(1 for r in replies if r.error)
            children_during = [rss_mib(p) for p in claude_children()]
        finally:
            runner.stop(time.monotonic() + 10)
    fake.stop()

    print(f"first turn (cold CLI start, SDK already imported): {first_latency:.3f} s  (error={first.error!r})")
    print(f"follow-up turn, kept-warm client, n={len(follow)}: median {statistics.median(follow):.3f} s, "
          f"min {min(follow):.3f} s, max {max(follow):.3f} s; fake's own time {args.fake_delay:.3f} s")
    print(f"runner overhead per message (stub client, no SDK): {overhead * 1000:.2f} ms")
    print(f"daemon RSS: {rss_start:.1f} MiB at start, {rss_after_import:.1f} MiB with runner + SDK imported, "
          f"{daemon_rss_one_client:.1f} MiB with one live client")
    print("CLI child RSS: " + ", ".join(f"{r:.0f} MiB" for r in child_rss) + " (one conversation)")
    print("CLI children after the burst: " + (", ".join(f"{r:.0f} MiB" for r in children_during) or "none"))
    print(f"20 messages / 5 conversations / concurrency 2 / max_clients 4: {burst:.2f} s ({failed} failed)")


if __name__ == "__main__":
    main()
