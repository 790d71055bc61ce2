"""Issue 10 through the whole daemon: the real CLI, the real bot libraries, the loopback fakes.

SIGTERM with a slow turn in flight: each chat is told before the process exits, and after the restart each
message is answered exactly once (late); messages sent while the daemon is down (Telegram and Discord) are all
answered once after start; a second quick restart answers nothing twice. Prints the figures the issue asks for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiwm_agentd.runner.failures import RESTARTING_NOTICE
from tests.e2e.test_daemon_platforms import API_KEY, DISCORD_TOKEN, GROUP, TELEGRAM_TOKEN, TURN, workers_state
from tests.fakes.anthropic import FakeAnthropic, echo_handler
from tests.fakes.discord import CHANNEL_ID, FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.harness import Daemon, assert_no_secrets, wait_for


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTelegram, FakeDiscord, FakeAnthropic]]:
    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    dc = FakeDiscord(DISCORD_TOKEN).start()
    anthropic = FakeAnthropic().start()
    yield tg, dc, anthropic
    tg.stop()
    dc.stop()
    anthropic.stop()


def start(tmp_path: Path, run: str, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]) -> Daemon:
    tg, dc, anthropic = fakes
    run_dir = tmp_path / run
    run_dir.mkdir()
    env = {
        "AIWM_ENABLED": "false", "LOG_LEVEL": "DEBUG", "AIWM_SHUTDOWN_TIMEOUT": "8",
        "AIWM_STATE_DIR": tmp_path / "state",  # shared by every run: the inbox survives the restarts
        "ANTHROPIC_BASE_URL": anthropic.url, "ANTHROPIC_API_KEY": API_KEY,
        "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_GROUP_ID": str(GROUP), "TELEGRAM_API_BASE_URL": tg.url,
        "DISCORD_TOKEN": DISCORD_TOKEN, "DISCORD_CHANNEL_ID": str(CHANNEL_ID), "DISCORD_API_BASE_URL": dc.api_url,
        "DISCORD_GATEWAY_URL": dc.gateway_url,
    }
    daemon = Daemon(run_dir, env)
    daemon.wait_ready()
    wait_for(lambda: workers_state(daemon) == {"discord": "ok", "telegram": "ok"}, 30, what="both bots ok")
    return daemon


def finish(daemon: Daemon) -> float:
    code, seconds = daemon.stop(20)
    daemon.close()
    assert code == 0, daemon.output()[-3000:]
    assert_no_secrets(daemon.output(), TELEGRAM_TOKEN, DISCORD_TOKEN, API_KEY)
    return seconds


def test_nothing_is_lost_or_answered_twice_across_stop_and_restarts(
        tmp_path: Path, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]) -> None:
    tg, dc, anthropic = fakes
    anthropic.set_reply(hang=True)  # every turn is "slow": still running at SIGTERM
    first = start(tmp_path, "first", fakes)
    tg.inject_message(GROUP, "@aiwm_test_bot slow telegram question")
    dc.inject_message(CHANNEL_ID, "slow discord question", mention_bot=True)
    anthropic.wait_for_requests(2, TURN)
    stop_seconds = finish(first)
    # Told before the exit (the fakes recorded it while the daemon was still up), once per chat.
    assert [m["text"] for m in tg.sent] == [RESTARTING_NOTICE]
    assert [m["content"] for m in dc.sent] == [RESTARTING_NOTICE]

    anthropic.set_handler(echo_handler)  # also frees the hung requests
    tg.inject_message(GROUP, "@aiwm_test_bot sent while down (telegram)")
    dc.inject_message(CHANNEL_ID, "sent while down (discord)", mention_bot=True)
    began = time.monotonic()
    second = start(tmp_path, "second", fakes)
    tg.wait_for_sent(3, TURN * 2)
    dc.wait_for_sent(3, TURN * 2)
    catch_up = time.monotonic() - began
    tg_texts = [m["text"] for m in tg.sent[1:]]
    dc_texts = [m["content"] for m in dc.sent[1:]]
    assert tg_texts[0].startswith("(Late answer") and tg_texts[0].endswith("echo: slow telegram question")
    assert tg_texts[1] == "echo: sent while down (telegram)"
    assert dc_texts[0].startswith("(Late answer") and dc_texts[0].endswith("echo: slow discord question")
    assert dc_texts[1] == "echo: sent while down (discord)"
    finish(second)

    third = start(tmp_path, "third", fakes)  # two quick restarts
    finish(third)
    fourth = start(tmp_path, "fourth", fakes)
    time.sleep(1.0)
    finish(fourth)
    assert len(tg.sent) == 3 and len(dc.sent) == 3
    print(f"\nstop with turns in flight: {stop_seconds:.2f} s; start to all four answered: {catch_up:.2f} s")
