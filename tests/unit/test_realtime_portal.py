"""The portal's dialect defaults and the answer rules (spec/aiwm-realtime.md sections 1-2), as pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from aiwm_agentd.realtime.portal import PortalFilter, socket_target

AGENT = "a" * 24


@pytest.mark.parametrize("version,namespace,dialect", [("v4", "/ws", "v4"), ("v5", "/ws/chat", "v5"),
                                                      ("v3", "/ws", "v4"), ("v6", "/ws/chat", "v6")])
def test_namespace_follows_the_controller_version(version: str, namespace: str, dialect: str) -> None:
    t = socket_target("https://ctl.example.com/api/", "tok", AGENT, version)
    assert (t.url, t.namespace, t.path, t.dialect) == ("https://ctl.example.com", namespace, "/socket.io", dialect)


def test_configured_parts_win_and_a_v6_gateway_is_recognised() -> None:
    t = socket_target("https://ctl.example.com", "tok", AGENT, "v5", ws_url="wss://gw.example.com:8443/x",
                      namespace="/", path="agent/socket.io")
    assert (t.url, t.namespace, t.path, t.dialect) == ("https://gw.example.com:8443", "/", "/agent/socket.io", "v6")
    assert "tok" not in t.describe()


def msg(**fields: Any) -> dict[str, Any]:
    return {"_id": fields.pop("_id", "m1"), "conversationId": "c1", "role": "user", "content": "hi", **fields}


def test_a_person_message_is_answered_once() -> None:
    f = PortalFilter(AGENT)
    accepted = f.accept(msg(platform="portal", workId="w9"))
    assert accepted is not None and (accepted.conversation_id, accepted.text, accepted.work_id) == ("c1", "hi", "w9")
    assert f.accept(msg()) is None and f.skipped == {"duplicate": 1}


@pytest.mark.parametrize("fields,reason", [
    ({"owner": {"agentId": AGENT}}, "own_echo"),
    ({"createdBy": {"agentId": AGENT}, "role": "assistant"}, "own_echo"),
    ({"role": "assistant"}, "not_user"),
    ({"skipAgent": True}, "skip_agent"),
    ({"type": "file"}, "not_text"),
    ({"type": "system"}, "not_text"),
    ({"content": "   "}, "empty"),
    ({"conversationId": ""}, "malformed"),
])
def test_what_is_not_answered(fields: dict[str, Any], reason: str) -> None:
    f = PortalFilter(AGENT)
    assert f.accept(msg(**fields)) is None
    assert f.skipped == {reason: 1}


def test_text_types_and_another_agents_echo_are_answered() -> None:
    f = PortalFilter(AGENT)
    assert f.accept(msg(_id="1", type="text")) is not None
    assert f.accept(msg(_id="2", type="message", owner={"agentId": "b" * 24})) is not None


def test_a_message_relayed_from_a_bot_this_daemon_runs_is_left_to_the_bot() -> None:
    f = PortalFilter(AGENT)
    assert f.accept(msg(_id="1", platform="discord"), frozenset({"discord"})) is None
    assert f.skipped == {"answered_by_bot": 1}
    assert f.accept(msg(_id="2", platform="telegram"), frozenset({"discord"})) is not None


def test_dedupe_memory_is_bounded() -> None:
    f = PortalFilter(AGENT, remember=3)
    for i in range(5):
        assert f.accept(msg(_id=str(i))) is not None
    assert f.accept(msg(_id="4")) is None  # recent: still remembered
    assert f.accept(msg(_id="0")) is not None  # forgotten after 3 newer ids
