"""The runner's turns with the real SDK and CLI against the fake API: requests, history, sessions, ordering."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiwm_agentd.runner.failures import FRESH_SESSION_NOTE
from aiwm_agentd.workers import ConversationKey
from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest, echo_handler
from tests.integration.runner_support import RunnerHarness, claude_children, wait_no_claude_children

pytestmark = pytest.mark.slow

INSTRUCTION = "You are the integration-test agent. Guideline 7: answer briefly."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_fake(fake: FakeAnthropic) -> Iterator[None]:
    fake.reset()
    fake.set_handler(echo_handler)
    yield
    assert wait_no_claude_children() == [], "a claude process outlived its runner"


def test_first_turn_sends_instruction_model_whitelist_and_api_key(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url, instruction=INSTRUCTION, model="claude-test-model-1",
                      tool_names=("Read", "Bash", "Grep"))
    try:
        reply = h.ask("hello there")
    finally:
        h.close()
    assert reply.error == ""
    assert reply.text == "echo: hello there"
    [request] = fake.message_requests()
    assert request.body["model"] == "claude-test-model-1"
    assert request.body["system"][-1]["text"] == INSTRUCTION
    assert set(request.tool_names) - {"DeferredToolPlaceholder"} == {"Read", "Bash", "Grep"}
    assert request.headers["x-api-key"] == h.config.claude.api_key
    assert "authorization" not in request.headers


def test_oauth_token_goes_as_bearer_and_empty_whitelist_means_no_tools(
        fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url, api_key="", oauth_token="oauth-fake-token-abcdef123456", tool_names=())
    try:
        reply = h.ask("hi")
    finally:
        h.close()
    assert reply.error == ""
    [request] = fake.message_requests()
    assert request.headers["authorization"] == "Bearer oauth-fake-token-abcdef123456"
    assert request.tool_names == []
    assert request.system_text.endswith(h.config.instruction)


def test_follow_up_carries_history_on_the_kept_warm_client(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url)
    try:
        first = h.ask("my name is Ada")
        children = {p.pid for p in claude_children()}
        second = h.ask("what is my name?")
        assert {p.pid for p in claude_children()} == children and len(children) == 1
    finally:
        h.close()
    assert (first.text, second.text) == ("echo: my name is Ada", "echo: what is my name?")
    assert first.session_id and first.session_id == second.session_id
    requests = fake.message_requests()
    assert requests[-1].user_texts == ["my name is Ada", "what is my name?"]


def test_new_instruction_reaches_an_ongoing_conversation(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url, instruction="INSTRUCTION A")
    try:
        first = h.ask("one")
        h.runner.apply(dataclasses.replace(h.config, instruction="INSTRUCTION B"))
        second = h.ask("two")
    finally:
        h.close()
    assert second.session_id == first.session_id  # the conversation was resumed, not restarted
    last = fake.message_requests()[-1]
    assert last.system_text.endswith("INSTRUCTION B")
    assert last.user_texts == ["one", "two"]


def test_restarted_runner_resumes_the_session(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url)
    try:
        first = h.ask("remember 42")
    finally:
        h.close()
    stored = json.loads((tmp_path / "sessions" / "sessions.json").read_text())
    assert stored["test:1"]["session_id"] == first.session_id

    h2 = RunnerHarness(tmp_path, fake.url)
    try:
        second = h2.ask("what did I ask you to remember?")
    finally:
        h2.close()
    assert second.error == "" and not second.fresh_session
    assert second.session_id == first.session_id
    assert fake.message_requests()[-1].user_texts == ["remember 42", "what did I ask you to remember?"]


def test_failed_resume_starts_fresh_and_says_so(fake: FakeAnthropic, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir(parents=True)
    bogus = "11111111-2222-4333-8444-555555555555"
    (sessions / "sessions.json").write_text(json.dumps({"test:1": {"session_id": bogus}}))
    h = RunnerHarness(tmp_path, fake.url)
    try:
        reply = h.ask("are you there?")
        again = h.ask("still there?")
    finally:
        h.close()
    assert reply.fresh_session and reply.error == ""
    assert reply.text.startswith(FRESH_SESSION_NOTE) and reply.text.endswith("echo: are you there?")
    assert reply.session_id and reply.session_id != bogus
    assert not again.fresh_session and again.session_id == reply.session_id
    stored = json.loads((sessions / "sessions.json").read_text())
    assert stored["test:1"]["session_id"] == reply.session_id
    assert fake.message_requests()[0].user_texts == ["are you there?"]


def test_reset_starts_a_new_session(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url)
    try:
        first = h.ask("one")
        h.runner.reset(ConversationKey("test", "1"))
        second = h.ask("two")
    finally:
        h.close()
    assert second.error == "" and second.session_id != first.session_id
    assert fake.message_requests()[-1].user_texts == ["two"]


def test_twenty_messages_in_five_conversations_answered_in_order(fake: FakeAnthropic, tmp_path: Path) -> None:
    def slow_echo(request: RecordedRequest) -> FakeReply:
        return FakeReply(text=f"echo: {request.last_user_text}", delay=0.05)

    fake.set_handler(slow_echo)
    h = RunnerHarness(tmp_path, fake.url, max_concurrency=2, max_clients=3)
    keys = [ConversationKey("test", f"c{i}") for i in range(5)]
    started = time.monotonic()
    try:
        futures = [(key, n, h.runner.submit(key, f"{key.chat_id} message {n}")) for n in range(4) for key in keys]
        assert h.runner.busy and h.runner.queue_depth() == 20
        results = [(key, n, future.result(120)) for key, n, future in futures]
        assert not h.runner.busy and h.runner.queue_depth() == 0
    finally:
        h.close()
    elapsed = time.monotonic() - started
    for key, n, reply in results:
        assert reply.error == "", reply
        assert reply.text == f"echo: {key.chat_id} message {n}"
    assert fake.max_in_flight <= 2
    by_conversation: dict[str, list[str]] = {}
    for request in fake.message_requests():
        last = request.last_user_text
        by_conversation.setdefault(last.split()[0], []).append(last)
    for key in keys:
        assert by_conversation[key.chat_id] == [f"{key.chat_id} message {n}" for n in range(4)]
    print(f"20 messages / 5 conversations / concurrency 2 / 3 clients: {elapsed:.2f} s")


def test_max_clients_caps_the_cli_processes(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url, max_clients=1, max_concurrency=2)
    seen = []
    try:
        for n in range(2):
            for chat in ("a", "b"):
                assert h.ask(f"{chat}{n}", ConversationKey("test", chat)).text == f"echo: {chat}{n}"
                seen.append(len(claude_children()))
        assert h.runner.health().extra["clients"] == 1
    finally:
        h.close()
    assert max(seen) == 1
    # each conversation kept its own history across the evictions
    assert fake.message_requests()[-1].user_texts == ["b0", "b1"]


def test_idle_client_is_closed(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url, idle_timeout=0.5)
    try:
        assert h.ask("hello").error == ""
        assert wait_no_claude_children(timeout=10) == []
        end = time.monotonic() + 5
        while h.runner.health().extra["clients"] and time.monotonic() < end:
            time.sleep(0.02)
        assert h.runner.health().extra["clients"] == 0
        assert h.ask("again").text == "echo: again"
    finally:
        h.close()
    assert fake.message_requests()[-1].user_texts == ["hello", "again"]


def test_bypass_permissions_as_root_still_answers(fake: FakeAnthropic, tmp_path: Path) -> None:
    h = RunnerHarness(tmp_path, fake.url, permission_mode="bypassPermissions")
    try:
        reply = h.ask("hi")
    finally:
        h.close()
    assert reply.error == "" and reply.text == "echo: hi"


def test_ask_once_answers_and_cleans_up(fake: FakeAnthropic, tmp_path: Path) -> None:
    from aiwm_agentd.runner import ask_once
    from tests.fakes.anthropic import agent_config

    config = agent_config(tmp_path, fake.url)
    reply = ask_once(config, "ping", ConversationKey.parse("ops"), timeout=60)
    assert reply.error == "" and reply.text == "echo: ping"
    assert json.loads((tmp_path / "sessions" / "sessions.json").read_text())["cli:ops"]["session_id"]
    again = ask_once(config, "pong", ConversationKey.parse("ops"), timeout=60)
    assert again.session_id == reply.session_id
    assert fake.message_requests()[-1].user_texts == ["ping", "pong"]
