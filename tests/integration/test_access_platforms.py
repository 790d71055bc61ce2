"""Who may talk, admin commands and the reply mask, through the real PTB and discord.py against the fakes."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from aiwm_agentd import logs
from aiwm_agentd.platforms import DiscordWorker, TelegramWorker, build_platform_workers
from aiwm_agentd.platforms.commands import ADMIN_ONLY_RELOAD, ADMIN_ONLY_STOP
from tests.fakes.discord import CHANNEL_ID, FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.integration.test_platform_workers import (
    DISCORD_TOKEN,
    GROUP,
    TELEGRAM_TOKEN,
    FakeRunner,
    Rig,
    captured_log,
    make_config,
    wait_until,
)

__all__ = ["captured_log"]  # the fixture, imported so pytest finds it here

ALLOWED, ADMIN, STRANGER = 42, 99, 77
ACCESS = {"TELEGRAM_ALLOWED_USER_IDS": str(ALLOWED), "TELEGRAM_ADMIN_USER_IDS": str(ADMIN),
          "DISCORD_ALLOWED_USER_IDS": str(ALLOWED), "DISCORD_ADMIN_USER_IDS": str(ADMIN),
          "TELEGRAM_ALLOW_DMS": "true", "DISCORD_ALLOW_DMS": "true"}
CONTROLLER_URL = "https://agent:ctl-url-password-4711@aiwm.example.test"
AGENT_ID = "65a1b2c3d4e5f60718293a4b"


class DetailedControl:
    """A control whose summary has everything an admin may see (and a URL with a password)."""

    def __init__(self) -> None:
        self.reloads = 0

    def status_summary(self) -> dict[str, Any]:
        return {"agent": "test-agent", "agent_id": AGENT_ID, "state": "connected", "healthy": True,
                "controller": CONTROLLER_URL, "model": "claude-haiku-4-5"}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        self.reloads += 1
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        future.set_result([])
        return future


@pytest.fixture
def access_rig(captured_log: io.StringIO) -> Iterator[Rig]:
    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    dc = FakeDiscord(DISCORD_TOKEN).start()
    runner, control = FakeRunner(), DetailedControl()
    discord_worker, telegram_worker = build_platform_workers(make_config(tg, dc, **ACCESS), runner, control)
    assert isinstance(discord_worker, DiscordWorker) and isinstance(telegram_worker, TelegramWorker)
    for w in (discord_worker, telegram_worker):
        w.backoff_base = 0.1
        w.typing_interval = 0.2
        w.start()
    rig = Rig(tg, dc, runner, control, telegram_worker, discord_worker)  # type: ignore[arg-type]
    wait_until(lambda: all(w.health().state == "ok" for w in rig.workers()), what="both workers ok")
    yield rig
    for w in rig.workers():
        w.stop(time.monotonic() + 2)
    tg.stop()
    dc.stop()


def settle() -> None:
    time.sleep(0.3)  # what would be answered wrongly has been by then (the fakes answer in milliseconds)


def test_telegram_answers_allowed_users_and_admins_only_in_groups_and_dms(access_rig: Rig) -> None:
    rig = access_rig
    rig.tg.inject_message(GROUP, "@aiwm_test_bot from a stranger", from_id=STRANGER)
    rig.tg.inject_message(STRANGER, "stranger dm", from_id=STRANGER)
    rig.tg.inject_message(GROUP, "@aiwm_test_bot from the allowed user", from_id=ALLOWED)
    rig.tg.inject_message(ALLOWED, "allowed dm", from_id=ALLOWED)
    rig.tg.inject_message(GROUP, "@aiwm_test_bot from the admin", from_id=ADMIN)
    rig.tg.wait_for_sent(3)
    settle()
    assert sorted(m["text"] for m in rig.tg.sent) == [
        "echo: allowed dm", "echo: from the admin", "echo: from the allowed user"]
    assert all("stranger" not in text for _, text in rig.runner.submits)


def test_discord_answers_allowed_users_and_admins_only_in_channels_and_dms(access_rig: Rig) -> None:
    rig = access_rig
    rig.dc.inject_message(CHANNEL_ID, "from a stranger", mention_bot=True, author_id=STRANGER)
    rig.dc.inject_message(CHANNEL_ID, "stranger dm", direct=True, author_id=STRANGER)
    rig.dc.inject_message(CHANNEL_ID, "from the allowed user", mention_bot=True, author_id=ALLOWED)
    rig.dc.inject_message(CHANNEL_ID, "allowed dm", direct=True, author_id=ALLOWED)
    rig.dc.inject_message(CHANNEL_ID, "from the admin", mention_bot=True, author_id=ADMIN)
    rig.dc.wait_for_sent(3)
    settle()
    assert sorted(m["content"] for m in rig.dc.sent) == [
        "echo: allowed dm", "echo: from the admin", "echo: from the allowed user"]


def test_without_a_user_list_every_group_member_may_talk_but_no_dm_is_answered(access_rig: Rig) -> None:
    rig = access_rig
    open_groups = make_config(rig.tg, rig.dc, TELEGRAM_ALLOW_DMS="true", DISCORD_ALLOW_DMS="true")
    for w in rig.workers():
        w.apply(open_groups)
    rig.tg.inject_message(STRANGER, "dm", from_id=STRANGER)
    rig.tg.inject_message(GROUP, "@aiwm_test_bot any member", from_id=STRANGER)
    rig.dc.inject_message(CHANNEL_ID, "dm", direct=True, author_id=STRANGER)
    rig.dc.inject_message(CHANNEL_ID, "any member", mention_bot=True, author_id=STRANGER)
    rig.tg.wait_for_sent(1)
    rig.dc.wait_for_sent(1)
    settle()
    assert [m["text"] for m in rig.tg.sent] == ["echo: any member"]
    assert [m["content"] for m in rig.dc.sent] == ["echo: any member"]


def test_reload_is_for_admins_only(access_rig: Rig) -> None:
    rig = access_rig
    rig.tg.inject_message(GROUP, "/reload", from_id=ALLOWED)
    assert rig.tg.wait_for_sent(1)[0]["text"] == ADMIN_ONLY_RELOAD
    rig.dc.inject_message(CHANNEL_ID, "/reload", mention_bot=True, author_id=ALLOWED)
    assert rig.dc.wait_for_sent(1)[0]["content"] == ADMIN_ONLY_RELOAD
    assert isinstance(rig.control, DetailedControl) and rig.control.reloads == 0
    rig.tg.inject_message(GROUP, "/reload", from_id=ADMIN)
    assert rig.tg.wait_for_sent(2)[1]["text"].startswith("Reloaded")
    assert rig.control.reloads == 1


def test_status_details_for_admins_only_and_never_the_url_password(access_rig: Rig) -> None:
    rig = access_rig
    rig.tg.inject_message(GROUP, "/status", from_id=ALLOWED)
    short = rig.tg.wait_for_sent(1)[0]["text"]
    assert "agent: test-agent" in short and "state: connected" in short
    assert AGENT_ID not in short and "aiwm.example.test" not in short and "controller" not in short
    rig.tg.inject_message(GROUP, "/status", from_id=ADMIN)
    full = rig.tg.wait_for_sent(2)[1]["text"]
    assert AGENT_ID in full and "aiwm.example.test" in full
    assert "ctl-url-password-4711" not in full and "agent:***@aiwm.example.test" in full


def test_stop_of_someone_elses_turn_needs_an_admin(access_rig: Rig) -> None:
    rig = access_rig
    rig.runner.delay = 1.5
    rig.tg.inject_message(GROUP, "@aiwm_test_bot a long job", from_id=ADMIN)
    wait_until(lambda: len(rig.runner.submits) == 1, what="the admin's turn")
    rig.tg.inject_message(GROUP, "/stop", from_id=ALLOWED)
    assert rig.tg.wait_for_sent(1)[0]["text"] == ADMIN_ONLY_STOP
    assert rig.runner.interrupts == []
    rig.tg.wait_for_sent(2)  # the admin's answer
    rig.tg.inject_message(GROUP, "@aiwm_test_bot my own job", from_id=ALLOWED)
    wait_until(lambda: len(rig.runner.submits) == 2, what="the user's turn")
    rig.tg.inject_message(GROUP, "/stop", from_id=ALLOWED)
    assert rig.tg.wait_for_sent(3)[2]["text"] == "Stopped the running turn."
    rig.tg.wait_for_sent(4)
    rig.tg.inject_message(GROUP, "@aiwm_test_bot another job", from_id=ALLOWED)
    wait_until(lambda: len(rig.runner.submits) == 3, what="the user's second turn")
    rig.tg.inject_message(GROUP, "/stop", from_id=ADMIN)
    assert rig.tg.wait_for_sent(5)[4]["text"] == "Stopped the running turn."
    assert len(rig.runner.interrupts) == 2


def test_replies_are_masked_in_every_encoded_form(access_rig: Rig) -> None:
    rig = access_rig
    secret = "sk-ant-reply-secret/0123+abc=="
    logs.register_secret(secret)
    forms = [secret, quote(secret, safe=""), json.dumps(secret)[1:-1],
             base64.b64encode(secret.encode()).decode(), base64.urlsafe_b64encode(b"x" + secret.encode()).decode()]
    rig.runner.answer = lambda text: " | ".join(forms) + " https://u:pw-in-url-123@h.example/x"
    rig.tg.inject_message(GROUP, "@aiwm_test_bot leak it", from_id=ALLOWED)
    rig.dc.inject_message(CHANNEL_ID, "leak it", mention_bot=True, author_id=ALLOWED)
    sent = [rig.tg.wait_for_sent(1)[0]["text"], rig.dc.wait_for_sent(1)[0]["content"]]
    for text in sent:
        assert "pw-in-url-123" not in text and "https://u:***@h.example/x" in text
        for form in forms:
            core = form.rstrip("=")[2:-2]  # what encodes the secret's bits whatever the alignment
            assert core not in text, form
