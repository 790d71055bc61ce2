"""Portal chat through the whole daemon: dev controller + its real python-socketio portal server, the daemon's
real python-socketio client, the runner with the real Claude CLI against the fake Anthropic API.

For each dialect (v4 `/ws`, v5 `/ws/chat`, v6 `/` on `/agent/socket.io`): a portal message is answered once in
its conversation with typing shown, the v4 echo of our own reply, a duplicate `_id`, `skipAgent` and non-text
messages are not answered. Then (v6) the operator commands, a refused token (accepted, then disconnected:
one reconnect for a fresh JWT, no loop), and the socket server going down and coming back (REST heartbeats
go on, chat resumes). No secret in the daemon's output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aiwm_devtools.portal import PortalServer
from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest
from tests.fakes.faulty_controller import FaultyController
from tests.harness import Daemon, assert_no_secrets, controller_env, wait_for

API_KEY = "sk-ant-e2e-portal-key-515151"
TURN = 60.0

pytestmark = pytest.mark.slow


class Rig:
    def __init__(self, tmp_path: Path, dialect: str, version: str = "v5", token_ttl: float = 86400) -> None:
        self.anthropic = FakeAnthropic().start()
        self.anthropic.set_handler(self._reply)
        self.ctl = FaultyController(version=version, bcrypt_rounds=4, token_ttl=token_ttl).start()
        self.ctl.set_instruction("You are the portal agent.", [])
        self.portal = PortalServer(self.ctl.controller, dialect).start()
        env = dict(line.split("=", 1) for line in self.portal.env_lines())
        self.daemon = Daemon(tmp_path, controller_env(
            self.ctl, ANTHROPIC_BASE_URL=self.anthropic.url, ANTHROPIC_API_KEY=API_KEY,
            AIWM_SHUTDOWN_TIMEOUT="5", **env))

    def _reply(self, request: RecordedRequest) -> FakeReply:
        return FakeReply(text=f"echo: {request.last_user_text}")

    def channel(self) -> dict[str, object]:
        workers = self.daemon.health().get("workers") or {}
        return dict(workers.get("aiwm") or {})

    def wait_open(self) -> None:
        wait_for(lambda: self.channel().get("state") == "ok" and self.portal.connected == 1, 20,
                 what="the portal socket open")

    def replies(self) -> list[dict[str, object]]:
        return [m for m in self.portal.sent if m.get("type") != "system"]

    def close(self) -> None:
        self.daemon.close()
        self.portal.stop()
        self.anthropic.stop()
        self.ctl.stop()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def factory(dialect: str, version: str = "v5", token_ttl: float = 86400) -> Rig:
        rig = Rig(tmp_path, dialect, version, token_ttl)
        rigs.append(rig)
        rig.daemon.wait_ready()
        rig.wait_open()
        return rig

    try:
        yield factory
    finally:
        for rig in rigs:
            try:
                code, _ = rig.daemon.stop()
                assert code == 0
                assert_no_secrets(rig.daemon.output(), API_KEY, rig.ctl.secret)
                assert rig.ctl.controller.issue_token().split(".")[0] + "." not in rig.daemon.output()
            finally:
                rig.close()


@pytest.mark.parametrize("dialect,version", [("v4", "v4"), ("v5", "v5"), ("v6", "v5")])
def test_portal_round_trip_answers_once_in_its_conversation(make_rig: Callable[..., Rig], dialect: str,
                                                             version: str) -> None:
    rig = make_rig(dialect, version)
    conversation = rig.portal.conversation_for()
    message_id = rig.portal.post("hello from the portal", conversation)
    wait_for(lambda: rig.replies(), TURN, what="the portal reply")
    reply = rig.replies()[0]
    assert reply["content"] == "echo: hello from the portal"
    assert reply["conversationId"] == conversation and reply["role"] == "assistant"
    assert {"conversationId": conversation, "isTyping": True} in rig.portal.typing
    wait_for(lambda: rig.portal.typing[-1] == {"conversationId": conversation, "isTyping": False}, 5,
             what="typing off after the answer")
    # Filtered: a duplicate delivery, skipAgent, a non-text type, another role. Then one more real message.
    rig.portal.post("hello from the portal", conversation, _id=message_id)
    rig.portal.post("do not answer", conversation, skipAgent=True)
    rig.portal.post("a file", conversation, type="file")
    rig.portal.post("assistant text", conversation, role="assistant")
    rig.portal.post("second", conversation)
    wait_for(lambda: len(rig.replies()) >= 2, TURN, what="the second reply")
    assert [m["content"] for m in rig.replies()] == ["echo: hello from the portal", "echo: second"]
    expected = {"duplicate": 1, "skip_agent": 1, "not_text": 1, "not_user": 1}

    def skipped() -> dict[str, int]:
        value = rig.channel().get("skipped")
        return value if isinstance(value, dict) else {}

    wait_for(lambda: all(skipped().get(k, 0) >= n for k, n in expected.items()), 5, what="the skip counts")
    assert {k: skipped().get(k) for k in expected} == expected
    if dialect == "v4":
        assert skipped().get("own_echo", 0) >= 2  # v4 echoes our own replies back to us
    assert rig.channel()["dialect"] == dialect
    assert len(rig.anthropic.message_requests()) >= 2


def test_operator_commands_and_chat_commands(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("v6")
    conversation = rig.portal.conversation_for()
    ack = rig.portal.command("inspect", conversation)
    assert ack == {"success": True}
    wait_for(lambda: [m for m in rig.portal.sent if m.get("type") == "system"], 10, what="the inspect answer")
    state = next(m for m in rig.portal.sent if m.get("type") == "system")["content"]
    assert '"state": "connected"' in str(state) and rig.ctl.secret not in str(state)
    assert rig.portal.command("sleep", conversation, reason="maintenance") == {"success": True, "status": "sleep"}
    wait_for(lambda: (rig.daemon.health().get("sleep") or {}).get("reason") == "maintenance", 5,
             what="sleep shown in /health")
    wait_for(lambda: rig.portal.heartbeats and rig.portal.heartbeats[-1]["status"] == "sleep", 5,
             what="a sleeping agent reports sleep (v6 socket heartbeat)")
    assert rig.portal.command("wake", conversation) == {"success": True, "status": "idle"}
    wait_for(lambda: rig.daemon.health().get("sleep") is None and rig.portal.heartbeats[-1]["status"] == "idle",
             5, what="awake again")
    assert rig.portal.command("stop", conversation)["success"] is True
    connects = rig.ctl.connects
    assert rig.portal.command("reload", conversation) == {"success": True}
    wait_for(lambda: rig.ctl.connects > connects, 10, what="reload reconnects to the controller")
    rig.portal.post("/status", conversation)
    wait_for(lambda: any("controller_version" in str(m["content"]) for m in rig.replies()), 20,
             what="chat /status answered in the portal")


def test_refused_token_reconnects_once_and_server_outage_degrades(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("v5")
    connects = rig.ctl.connects
    rig.ctl.revoke_tokens()  # the open socket keeps working; the next socket handshake is refused
    rig.portal.stop()  # the socket server goes down: REST heartbeats go on
    wait_for(lambda: rig.channel().get("state") == "degraded", 10, what="the channel degraded")
    beats = len(rig.ctl.heartbeats)
    rig.portal.start()
    # Heartbeat 401 or the socket's refusal: a reconnect gives a fresh JWT, and the socket reopens with it.
    wait_for(lambda: rig.ctl.connects > connects and rig.channel().get("state") == "ok"
             and rig.portal.connected == 1, 60, what="the socket open again with a fresh token")
    assert len(rig.ctl.heartbeats) > beats or rig.ctl.connects > connects
    assert rig.ctl.connects - connects <= 3, "reconnect loop"
    rig.portal.post("after the outage")
    wait_for(lambda: rig.replies(), TURN, what="chat resumes")
    assert rig.replies()[0]["content"] == "echo: after the outage"


def test_v6_heartbeats_go_over_the_socket_and_fall_back_to_rest(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("v6")
    wait_for(lambda: len(rig.portal.heartbeats) >= 3, 10, what="heartbeats over the socket")
    rest = len(rig.ctl.heartbeats)
    wait_for(lambda: len(rig.portal.heartbeats) >= 6, 10, what="more socket heartbeats")
    assert len(rig.ctl.heartbeats) <= rest + 1  # REST is the fallback only (one may have been in flight)
    assert rig.portal.heartbeats[-1]["status"] == "idle" and isinstance(rig.portal.heartbeats[-1]["metrics"], dict)
    rig.portal.command("sleep", reason="night")
    wait_for(lambda: rig.portal.heartbeats[-1]["status"] == "sleep", 5, what="status sleep over the socket")
    assert rig.portal.heartbeats[-1]["sleep"]["reason"] == "night"
    rig.portal.command("wake")
    wait_for(lambda: rig.portal.heartbeats[-1]["status"] == "idle", 5, what="idle again")
    rig.portal.stop()
    rest = len(rig.ctl.heartbeats)
    wait_for(lambda: len(rig.ctl.heartbeats) >= rest + 3, 10, what="REST heartbeats while the socket is down")
    rig.portal.start()
    rig.wait_open()


def test_token_rotation_reopens_the_socket_with_the_new_token(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("v5", token_ttl=5)  # refreshed 4.5 s after each connect
    first = rig.portal.accepted_tokens
    connects = rig.ctl.connects
    wait_for(lambda: rig.ctl.connects > connects and len(rig.portal.accepted_tokens) > len(first)
             and rig.portal.connected == 1, 15, what="a token refresh and the socket reopened")
    tokens = rig.portal.accepted_tokens
    assert tokens[-1] != first[-1] and rig.portal.refused == 0  # reopened with the new JWT, never refused
    rig.portal.post("after the rotation")
    wait_for(lambda: rig.replies(), TURN, what="chat after the rotation")
