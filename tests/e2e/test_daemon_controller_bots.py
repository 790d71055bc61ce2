"""The whole chain: the controller configures the bot and Claude, the daemon serves Telegram through the real CLI.

Controller (dev controller, v5) -> supervisor -> runner (real SDK + CLI -> fake Anthropic) and the Telegram
worker (real PTB -> fake Bot API); heartbeats report `busy` while a turn runs; chat `/reload` applies a new
instruction and keeps the conversation; the MCP Authorization header follows the token across reconnects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest
from tests.fakes.faulty_controller import FaultyController
from tests.fakes.telegram import FakeTelegram
from tests.harness import Daemon, assert_no_secrets, controller_env, wait_for

TELEGRAM_TOKEN = "626262:e2e-controller-telegram-secret"
API_KEY = "sk-ant-e2e-controller-key-424242"
GROUP = -1003
TURN = 60.0

pytestmark = pytest.mark.slow


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tg = FakeTelegram(TELEGRAM_TOKEN).start()
        self.anthropic = FakeAnthropic().start()
        self.anthropic.set_handler(self._reply)
        self.delay = 0.0
        self.ctl = FaultyController(version="v5", bcrypt_rounds=4).start()
        self.ctl.set_instruction("You are the controller-configured agent.", [])
        self.ctl.set_settings({"claude_model": "claude-from-controller", "telegram_adminUserIds": "42"})
        self.ctl.set_mcp(True)
        # The bot comes from the controller only: no TELEGRAM_BOT_TOKEN in the env file.
        self.ctl.set_channels([{"platform": "telegram", "enabled": True, "token": TELEGRAM_TOKEN,
                                "channelId": str(GROUP), "requireMentions": False}])
        self.daemon = Daemon(tmp_path, controller_env(
            self.ctl, ANTHROPIC_BASE_URL=self.anthropic.url, ANTHROPIC_API_KEY=API_KEY,
            TELEGRAM_API_BASE_URL=self.tg.url, AIWM_SHUTDOWN_TIMEOUT="5", LOG_LEVEL="DEBUG"))

    def _reply(self, request: RecordedRequest) -> FakeReply:
        return FakeReply(text=f"echo: {request.last_user_text}", delay=self.delay)

    def close(self) -> None:
        self.daemon.close()
        self.tg.stop()
        self.anthropic.stop()
        self.ctl.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        r.daemon.wait_ready()
        wait_for(lambda: (r.daemon.health().get("workers") or {}).get("telegram", {}).get("state") == "ok", 20,
                 what="the controller-configured Telegram bot up")
        yield r
        code, _ = r.daemon.stop()
        assert code == 0
        assert_no_secrets(r.daemon.output(), TELEGRAM_TOKEN, API_KEY, r.ctl.secret)
    finally:
        r.close()


def _mcp_calls(ctl: FaultyController) -> list[dict[str, object]]:
    return [r for r in ctl.requests if r["path"] == "/mcp"]


def test_controller_configures_bot_and_claude_and_heartbeat_reports_busy(rig: Rig) -> None:
    rig.delay = 1.5  # a turn long enough for a few 0.3 s heartbeats
    rig.tg.inject_message(GROUP, "no mention needed here")  # requireMentions=false from the controller
    wait_for(lambda: "aiwm_agent_busy 1.0" in rig.daemon.metrics(), TURN, what="busy gauge during the turn")
    assert rig.tg.wait_for_sent(1, TURN)[0]["text"] == "echo: no mention needed here"
    request = rig.anthropic.message_requests()[-1]
    assert request.system_text.endswith("You are the controller-configured agent.")
    assert request.body["model"] == "claude-from-controller"
    assert request.headers["x-api-key"] == API_KEY
    assert "busy" in [b["status"] for b in rig.ctl.heartbeats]
    wait_for(lambda: rig.ctl.heartbeats[-1]["status"] == "idle", 5, what="idle again after the turn")
    assert "aiwm_agent_busy 0.0" in rig.daemon.metrics()
    # The CLI reached the controller's MCP server with the agent's token.
    calls = _mcp_calls(rig.ctl)
    assert calls and all(r["status"] in (200, 202, 405) for r in calls), calls  # 401 = a bad token


def test_chat_reload_applies_a_new_instruction_and_keeps_the_conversation(rig: Rig) -> None:
    rig.tg.inject_message(GROUP, "remember the word teapot")
    rig.tg.wait_for_sent(1, TURN)
    rig.ctl.set_instruction("You are the RELOADED agent.", [])
    rig.tg.inject_message(GROUP, "/reload")
    confirmation = rig.tg.wait_for_sent(2, TURN)[1]["text"]
    assert "instruction" in confirmation, confirmation
    rig.tg.inject_message(GROUP, "what was the word?")
    assert rig.tg.wait_for_sent(3, TURN)[2]["text"] == "echo: what was the word?"
    request = rig.anthropic.message_requests()[-1]
    assert request.system_text.endswith("You are the RELOADED agent.")
    assert "remember the word teapot" in " ".join(request.user_texts)  # the session survived the reload


def test_mcp_authorization_follows_the_token_across_reconnects(rig: Rig) -> None:
    rig.tg.inject_message(GROUP, "first")
    rig.tg.wait_for_sent(1, TURN)
    connects = rig.ctl.connects
    rig.ctl.revoke_tokens()  # every issued token dies: heartbeat 401 -> reconnect -> new token
    wait_for(lambda: rig.ctl.connects > connects and rig.daemon.health()["state"] == "connected", 10,
             what="a reconnect with a new token")
    before = len(_mcp_calls(rig.ctl))
    rig.tg.inject_message(GROUP, "second")
    assert rig.tg.wait_for_sent(2, TURN)[1]["text"] == "echo: second"
    after = _mcp_calls(rig.ctl)[before:]
    assert after, "the restarted CLI did not reach the MCP server"
    assert all(r["status"] in (200, 202, 405) for r in after), after  # a stale token would get 401
