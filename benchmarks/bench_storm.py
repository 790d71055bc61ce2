"""A storm of messages into one Telegram chat: typing calls, replies, refusals and turns.

    .venv/bin/python benchmarks/bench_storm.py [--messages 1000] [--turn 0.02] [--limit N] [--root PATH]

The real TelegramWorker (PTB) against tests/fakes/telegram.py, the real ClaudeRunner with a stub SDK client
whose turns take `--turn` seconds (no CLI, no API: what is measured is our queueing, not Claude). Reports,
from the first injected message until the chat is quiet: sendChatAction calls (total and per second),
sendMessage calls (answers and refusals), turns the runner started (each would be a paid turn).
`--root` runs another checkout's aiwm_agentd (e.g. the code before the queue cap) with the same fakes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--turn", type=float, default=0.02)
    parser.add_argument("--root", default=str(HERE))
    parser.add_argument("--limit", type=int, default=0, help="CLAUDE_QUEUE_LIMIT (default: the config default)")
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    sys.path.insert(1, str(HERE))  # the fakes
    from claude_agent_sdk import AssistantMessage, ResultMessage, SystemMessage, TextBlock

    from aiwm_agentd.config import build_agent_config, load_daemon_settings
    from aiwm_agentd.platforms.telegram_worker import TelegramWorker
    from aiwm_agentd.runner import ClaudeRunner
    from tests.fakes.telegram import FakeTelegram

    turns = [0]

    class Stub:
        def __init__(self, options: Any) -> None:
            self.text = ""

        async def connect(self) -> None: ...

        async def disconnect(self) -> None: ...

        async def interrupt(self) -> None: ...

        async def query(self, text: str) -> None:
            self.text = text

        async def receive_response(self) -> Any:
            turns[0] += 1
            yield SystemMessage("init", {"session_id": "s"})
            await asyncio.sleep(args.turn)
            yield AssistantMessage([TextBlock("ok")], model="stub")
            yield ResultMessage(subtype="success", duration_ms=1, duration_api_ms=1, is_error=False,
                                num_turns=1, session_id="s", result="ok")

    tg = FakeTelegram("424242:bench-storm-token").start()
    state = Path("/tmp/bench-storm-state")
    env = {"AIWM_ENABLED": "false", "AIWM_STATE_DIR": str(state), "TELEGRAM_BOT_TOKEN": tg.token,
           "TELEGRAM_GROUP_ID": "-1001", "TELEGRAM_API_BASE_URL": tg.url, "ANTHROPIC_API_KEY": "x" * 20}
    if args.limit:
        env["CLAUDE_QUEUE_LIMIT"] = str(args.limit)
    config = build_agent_config(env, None, load_daemon_settings(env))
    runner = ClaudeRunner(config)
    runner.client_factory = Stub
    runner.start()

    class Control:
        def status_summary(self) -> dict[str, Any]:
            return {}

        def request_reload(self) -> concurrent.futures.Future[list[str]]:
            return concurrent.futures.Future()

    worker = TelegramWorker(config, runner, Control())
    worker.start()
    end = time.monotonic() + 15
    while worker.health().state != "ok" and time.monotonic() < end:
        time.sleep(0.05)
    began = time.monotonic()
    for n in range(args.messages):
        tg.inject_message(-1001, f"@aiwm_test_bot storm {n}")
    quiet_since, seen = time.monotonic(), (0, 0)
    while time.monotonic() - quiet_since < 3.0:  # until nothing was sent for 3 s
        time.sleep(0.1)
        now = (len(tg.sent), len(tg.actions))
        if now != seen:
            seen, quiet_since = now, time.monotonic()
    elapsed = quiet_since - began
    texts = [m["text"] for m in tg.sent]
    refusals = sum(1 for t in texts if "too many messages" in t.lower())
    actions = len(tg.actions)
    print(f"code: {args.root}  messages: {args.messages}  turn: {args.turn * 1000:.0f} ms  "
          f"queue_limit: {getattr(config.claude, 'queue_limit', 'n/a')}")
    print(f"storm over in {elapsed:.1f} s; turns started {turns[0]}; sendMessage {len(texts)} "
          f"(answers {texts.count('ok')}, refusals {refusals}); sendChatAction {actions} "
          f"({actions / max(elapsed, 0.001):.1f}/s); 429s {sum(1 for _m, s in tg.calls if s == 429)}")
    worker.stop(time.monotonic() + 3)
    runner.stop(time.monotonic() + 3)
    tg.stop()


if __name__ == "__main__":
    main()
