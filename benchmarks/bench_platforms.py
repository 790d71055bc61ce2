"""Platform workers: message-in -> reply-out latency, idle RSS with both bots connected, stop time.

    .venv/bin/python benchmarks/bench_platforms.py [--messages 200]

Runs the real discord.py Client and PTB Application against the loopback fakes in tests/fakes with an
instant fake runner. Latency is reported twice: end to end through the fake server (inject -> the fake
receives the reply: includes the fake, the HTTP/gateway hop and the library) and the worker's own share
(library callback -> first reply chunk handed to the library). RSS and stop time are measured in a child
process that holds only the workers (the fakes stay in this process).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiwm_agentd.config import AgentConfig, build_agent_config, load_daemon_settings  # noqa: E402
from aiwm_agentd.platforms import build_platform_workers  # noqa: E402
from aiwm_agentd.platforms.base import PlatformWorker  # noqa: E402
from aiwm_agentd.workers import ConversationKey, Reply  # noqa: E402

TELEGRAM_TOKEN = "424242:bench-telegram-token"
DISCORD_TOKEN = "bench-discord-token.abc.def"
GROUP = -1001


class InstantRunner:
    busy = False

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        future.set_result(Reply(text=f"echo: {text}"))
        return future

    def reset(self, conversation: ConversationKey) -> None:
        pass

    def interrupt(self, conversation: ConversationKey) -> bool:
        return False

    def queue_depth(self, conversation: ConversationKey | None = None) -> int:
        return 0


class Control:
    def status_summary(self) -> dict[str, Any]:
        return {}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        future.set_result([])
        return future


def make_config(urls: dict[str, str]) -> AgentConfig:
    # A fresh state dir per run: the fakes restart their message ids, which the inbox would take as seen.
    state = tempfile.mkdtemp(prefix="bench-platforms-")
    env = {"AIWM_ENABLED": "false", "AIWM_STATE_DIR": state, "TELEGRAM_GROUP_ID": str(GROUP), **urls}
    return build_agent_config(env, None, load_daemon_settings(env))


def wait_ok(workers: list[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(w.health().state == "ok" for w in workers):
        if time.monotonic() > deadline:
            raise SystemExit(f"workers not ok: {[w.health() for w in workers]}")
        time.sleep(0.01)


def instrument(worker: PlatformWorker, samples: list[float]) -> None:
    """Record callback -> first send() of each turn (the worker's own overhead)."""
    original = worker.handle_message

    def handle(key: ConversationKey, text: str, command: Any, responder: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        send = responder.send
        first = [True]

        async def timed_send(chunk: str) -> None:
            if first[0]:
                samples.append(time.perf_counter() - began)
                first[0] = False
            await send(chunk)

        responder.send = timed_send
        original(key, text, command, responder, **kwargs)

    worker.handle_message = handle  # type: ignore[method-assign]


def ms(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[int(len(values) * 0.95) - 1]
    return f"p50 {statistics.median(values) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms, max {values[-1] * 1000:.2f} ms"


def latency(count: int) -> None:
    from tests.fakes.discord import CHANNEL_ID, FakeDiscord
    from tests.fakes.telegram import FakeTelegram

    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    dc = FakeDiscord(DISCORD_TOKEN).start()
    urls = fake_env(tg, dc)
    workers = build_platform_workers(make_config(urls), InstantRunner(), Control())
    inner: dict[str, list[float]] = {"discord": [], "telegram": []}
    for w in workers:
        assert isinstance(w, PlatformWorker)
        instrument(w, inner[w.name])
        w.start()
    wait_ok(workers)
    outer: dict[str, list[float]] = {"discord": [], "telegram": []}
    for n in range(count):
        began = time.perf_counter()
        tg.inject_message(GROUP, f"@aiwm_test_bot ping {n}")
        tg.wait_for_sent(n + 1)
        outer["telegram"].append(time.perf_counter() - began)
        began = time.perf_counter()
        dc.inject_message(CHANNEL_ID, f"ping {n}", mention_bot=True)
        dc.wait_for_sent(n + 1)
        outer["discord"].append(time.perf_counter() - began)
    for w in workers:
        w.stop(time.monotonic() + 2)
    for name in ("telegram", "discord"):
        print(f"{name:8} end to end  ({count} msgs): {ms(outer[name])}")
        print(f"{name:8} worker only ({count} msgs): {ms(inner[name])}")
    child(urls)
    tg.stop()
    dc.stop()


def fake_env(tg: Any, dc: Any) -> dict[str, str]:
    from tests.fakes.discord import CHANNEL_ID

    return {"DISCORD_CHANNEL_ID": str(CHANNEL_ID), "TELEGRAM_BOT_TOKEN": tg.token, "TELEGRAM_API_BASE_URL": tg.url,
            "DISCORD_TOKEN": dc.token, "DISCORD_API_BASE_URL": dc.api_url, "DISCORD_GATEWAY_URL": dc.gateway_url}


def child(urls: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(urls)], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"RSS, no bots configured (workers idle):   {figures['rss_idle_no_bots']:.1f} MiB")
    print(f"RSS, both bots connected, idle 2 s:       {figures['rss_connected']:.1f} MiB")
    print(f"stop() of both workers while connected:   {figures['stop_s'] * 1000:.1f} ms")


def run_child(urls: dict[str, str]) -> None:
    import psutil

    process = psutil.Process()
    idle = build_platform_workers(make_config({}), InstantRunner(), Control())
    for w in idle:
        w.start()
    time.sleep(0.5)
    rss_idle = process.memory_info().rss / 2**20
    for w in idle:
        w.stop(time.monotonic() + 1)
    workers = build_platform_workers(make_config(urls), InstantRunner(), Control())
    for w in workers:
        w.start()
    wait_ok(workers)
    time.sleep(2)
    rss = process.memory_info().rss / 2**20
    began = time.monotonic()
    for w in workers:
        w.stop(began + 1.0)
    stop_s = time.monotonic() - began
    print(json.dumps({"rss_idle_no_bots": rss_idle, "rss_connected": rss, "stop_s": stop_s}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(json.loads(args.child))
    else:
        latency(args.messages)


if __name__ == "__main__":
    main()
