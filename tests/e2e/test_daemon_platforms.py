"""The daemon process (local mode) with both bots, the real Claude CLI and the fake Anthropic API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest, echo_handler
from tests.fakes.discord import CHANNEL_ID, OTHER_CHANNEL_ID, FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.harness import Daemon, assert_no_secrets, wait_for

TELEGRAM_TOKEN = "515151:e2e-telegram-secret"
DISCORD_TOKEN = "e2e-discord-secret.abc.xyz"
API_KEY = "sk-ant-fake-e2e-key-0123456789"
GROUP = -1001
TURN = 60.0  # the real CLI: ~1.5 s a cold turn, more on a loaded machine


@pytest.fixture
def fakes() -> Iterator[tuple[FakeTelegram, FakeDiscord, FakeAnthropic]]:
    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    dc = FakeDiscord(DISCORD_TOKEN).start()
    anthropic = FakeAnthropic().start()
    anthropic.set_handler(echo_handler)
    yield tg, dc, anthropic
    tg.stop()
    dc.stop()
    anthropic.stop()


@pytest.fixture
def daemon(tmp_path: Path, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]) -> Iterator[Daemon]:
    tg, dc, anthropic = fakes
    env = {
        "AIWM_ENABLED": "false", "LOG_LEVEL": "DEBUG", "AIWM_SHUTDOWN_TIMEOUT": "5",
        "ANTHROPIC_BASE_URL": anthropic.url, "ANTHROPIC_API_KEY": API_KEY,
        "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_GROUP_ID": str(GROUP), "TELEGRAM_API_BASE_URL": tg.url,
        "DISCORD_TOKEN": DISCORD_TOKEN, "DISCORD_CHANNEL_ID": str(CHANNEL_ID), "DISCORD_API_BASE_URL": dc.api_url,
        "DISCORD_GATEWAY_URL": dc.gateway_url,
    }
    d = Daemon(tmp_path, env)
    d.wait_ready()
    wait_for(lambda: workers_state(d) == {"discord": "ok", "telegram": "ok"}, 15, what="both bots ok in /health")
    yield d
    d.close()
    assert_no_secrets(d.output(), TELEGRAM_TOKEN, DISCORD_TOKEN, API_KEY)


def workers_state(d: Daemon) -> dict[str, str]:
    workers = d.health().get("workers") or {}
    if isinstance(workers, list):
        return {w["name"]: w["state"] for w in workers if w.get("name") in ("discord", "telegram")}
    return {name: w["state"] for name, w in workers.items() if name in ("discord", "telegram")}


def test_mentions_are_answered_through_the_model_and_others_are_not(
    daemon: Daemon, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]
) -> None:
    tg, dc, anthropic = fakes
    dc.inject_message(OTHER_CHANNEL_ID, "wrong channel", mention_bot=True)
    dc.inject_message(CHANNEL_ID, "from a bot", mention_bot=True, author_bot=True, author_id=555)
    dc.inject_message(CHANNEL_ID, "hello discord", mention_bot=True)
    tg.inject_message(-2002, "@aiwm_test_bot wrong group")
    tg.inject_message(GROUP, "@aiwm_test_bot hello telegram")
    assert dc.wait_for_sent(1, TURN)[0]["content"] == "echo: hello discord"
    assert tg.wait_for_sent(1, TURN)[0]["text"] == "echo: hello telegram"
    asked = [r.last_user_text for r in anthropic.requests if r.last_user_text]
    assert "wrong channel" not in asked and "from a bot" not in asked and "wrong group" not in asked


def test_new_starts_a_fresh_session(daemon: Daemon, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]) -> None:
    tg, _, anthropic = fakes
    tg.inject_message(GROUP, "@aiwm_test_bot remember apples")
    tg.wait_for_sent(1, TURN)
    tg.inject_message(GROUP, "@aiwm_test_bot and pears")
    tg.wait_for_sent(2, TURN)
    assert any("remember apples" in t for t in anthropic.requests[-1].user_texts)  # same session so far
    tg.inject_message(GROUP, "/new")
    assert tg.wait_for_sent(3, TURN)[2]["text"].startswith("Started a fresh session")
    tg.inject_message(GROUP, "@aiwm_test_bot after the reset")
    assert tg.wait_for_sent(4, TURN)[3]["text"] == "echo: after the reset"
    assert not any("apples" in t for t in anthropic.requests[-1].user_texts)


def test_discord_server_restart_recovers_without_restarting_the_daemon(
    daemon: Daemon, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]
) -> None:
    _, dc, _ = fakes
    dc.kill()
    wait_for(lambda: workers_state(daemon).get("discord") == "degraded", 10, what="discord degraded")
    dc.restart()
    wait_for(lambda: workers_state(daemon).get("discord") == "ok", 20, what="discord ok again")
    dc.inject_message(CHANNEL_ID, "back?", mention_bot=True)
    assert dc.wait_for_sent(1, TURN)[0]["content"] == "echo: back?"
    assert daemon.proc.poll() is None


def test_long_answers_are_split_and_three_messages_answer_in_order(
    daemon: Daemon, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]
) -> None:
    tg, dc, anthropic = fakes
    long_text = "\n\n".join(
        f"Part {i}. " + "words " * 60 + ("\n\n```python\n" + "x = 1\n" * 30 + "```" if i % 4 == 0 else "")
        for i in range(30)
    )

    def handler(request: RecordedRequest) -> FakeReply:
        return FakeReply(text=long_text) if "long" in request.last_user_text else echo_handler(request)

    anthropic.set_handler(handler)
    dc.inject_message(CHANNEL_ID, "long please", mention_bot=True)
    wait_for(lambda: sum(len(m["content"]) for m in dc.sent) >= len(long_text) - 200, TURN, what="long answer")
    assert all(len(m["content"]) <= 2000 for m in dc.sent) and len(dc.sent) >= 5
    assert all(m["content"].count("```") % 2 == 0 for m in dc.sent)
    sent = len(dc.sent)
    for n in range(3):
        tg.inject_message(GROUP, f"@aiwm_test_bot question {n}")
    tg.wait_for_sent(3, TURN * 3)
    assert [m["text"] for m in tg.sent] == [f"echo: question {n}" for n in range(3)]
    assert len(dc.sent) == sent


def test_revoked_telegram_token_in_health_while_discord_answers(
    daemon: Daemon, fakes: tuple[FakeTelegram, FakeDiscord, FakeAnthropic]
) -> None:
    tg, dc, _ = fakes
    tg.revoke()
    wait_for(lambda: workers_state(daemon).get("telegram") == "error", 15, what="telegram error in /health")
    dc.inject_message(CHANNEL_ID, "still there?", mention_bot=True)
    assert dc.wait_for_sent(1, TURN)[0]["content"] == "echo: still there?"
    assert workers_state(daemon)["discord"] == "ok"


def test_sigterm_with_both_bots_connected_exits_0_within_a_second(daemon: Daemon) -> None:
    code, seconds = daemon.stop()
    assert code == 0
    assert seconds < 1.0
