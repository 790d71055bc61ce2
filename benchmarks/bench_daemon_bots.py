"""The daemon process with both bots connected: idle RSS and SIGTERM -> exit.

    .venv/bin/python benchmarks/bench_daemon_bots.py [--runs 5]

Local mode (no controller), the real discord.py and python-telegram-bot against the loopback fakes, the
Claude runner started (SDK imported in its thread, no conversation yet).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.discord import CHANNEL_ID, FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.harness import Daemon, wait_for

TELEGRAM_TOKEN = "515151:bench-telegram-secret"
DISCORD_TOKEN = "bench-discord-secret.abc.xyz"


def both_ok(d: Daemon) -> bool:
    workers = d.health().get("workers") or {}
    return all(workers.get(name, {}).get("state") == "ok" for name in ("discord", "telegram"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    dc = FakeDiscord(DISCORD_TOKEN).start()
    anthropic = FakeAnthropic().start()
    stops: list[float] = []
    rss: list[float] = []
    try:
        for _ in range(args.runs):
            d = Daemon(Path(tempfile.mkdtemp(prefix="bench-bots-")), {
                "AIWM_ENABLED": "false", "LOG_LEVEL": "WARNING",
                "ANTHROPIC_BASE_URL": anthropic.url, "ANTHROPIC_API_KEY": "sk-ant-bench",
                "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_GROUP_ID": "-1001", "TELEGRAM_API_BASE_URL": tg.url,
                "DISCORD_TOKEN": DISCORD_TOKEN, "DISCORD_CHANNEL_ID": str(CHANNEL_ID),
                "DISCORD_API_BASE_URL": dc.api_url, "DISCORD_GATEWAY_URL": dc.gateway_url,
            })
            try:
                d.wait_ready()
                wait_for(lambda d=d: both_ok(d), 30, what="both bots connected")
                time.sleep(2)
                rss.append(psutil.Process(d.proc.pid).memory_info().rss / 1048576)
                code, seconds = d.stop()
                assert code == 0, d.output()
                stops.append(seconds)
            finally:
                d.close()
    finally:
        tg.stop()
        dc.stop()
        anthropic.stop()
    print(f"idle RSS, both bots connected + runner: median {statistics.median(rss):.1f} MiB over {args.runs} runs")
    print(f"SIGTERM -> exit, both bots connected:   median {statistics.median(stops) * 1000:.0f} ms, "
          f"max {max(stops) * 1000:.0f} ms over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
