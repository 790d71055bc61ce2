"""The runner when things go wrong, with the real SDK and CLI: timeouts, outages, shutdown, secrets."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd import logs
from aiwm_agentd.workers import ConversationKey
from tests.fakes.anthropic import FakeAnthropic, echo_handler
from tests.integration.runner_support import RunnerHarness, claude_children, wait_no_claude_children

pytestmark = pytest.mark.slow

KEY = ConversationKey("test", "1")


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
    fake.set_reply("ok")  # frees anything left hanging
    assert wait_no_claude_children() == [], "a claude process outlived its runner"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_hanging_api_hits_the_turn_timeout_and_the_next_turn_works(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.set_reply(hang=True)
    h = RunnerHarness(tmp_path, fake.url, turn_timeout=2.0)
    try:
        started = time.monotonic()
        reply = h.ask("this will hang")
        took = time.monotonic() - started
        assert reply.error == "timeout" and "2 seconds" in reply.text
        assert 1.9 <= took < 6.0
        fake.set_handler(echo_handler)
        # a cold start under load can take longer than 2 s: give the next turn room (and exercise apply())
        h.runner.apply(replace(h.config, claude=replace(h.config.claude, turn_timeout=30.0)))
        after = h.ask("and now?")
    finally:
        h.close()
    assert after.error == "" and after.text == "echo: and now?"


def test_unreachable_api_gives_an_error_reply_within_seconds(tmp_path: Path) -> None:
    # The production retry setting (CLAUDE_CODE_MAX_RETRIES=2 unless the env says otherwise).
    h = RunnerHarness(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    try:
        started = time.monotonic()
        reply = h.ask("anyone there?")
        took = time.monotonic() - started
    finally:
        h.close()
    assert reply.error == "unreachable", reply
    assert "cannot reach the Claude API" in reply.text
    assert took < 10.0


def test_api_error_status_is_reported_honestly(fake: FakeAnthropic, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "0")
    fake.set_reply(status=529, error_type="overloaded_error")
    h = RunnerHarness(tmp_path, fake.url)
    try:
        reply = h.ask("hi")
    finally:
        h.close()
    assert reply.error == "api_error" and "529" in reply.text


def test_no_credentials_is_a_clear_reply(fake: FakeAnthropic, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "inherited-key-must-not-be-used-1234")
    h = RunnerHarness(tmp_path, fake.url, api_key="", oauth_token="")
    try:
        started = time.monotonic()
        reply = h.ask("hi")
    finally:
        h.close()
    assert reply.error == "no_credentials", reply
    assert time.monotonic() - started < 10
    assert all("x-api-key" not in r.headers for r in fake.message_requests())


def test_interrupt_stops_the_running_turn_and_keeps_the_queue(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.set_reply(hang=True)
    h = RunnerHarness(tmp_path, fake.url, turn_timeout=30.0)
    try:
        first = h.runner.submit(KEY, "long job")
        second = h.runner.submit(KEY, "next question")
        fake.wait_for_requests(1, timeout=20)
        assert h.runner.queue_depth(KEY) == 2 and h.runner.busy
        fake.set_handler(echo_handler)
        started = time.monotonic()
        assert h.runner.interrupt(KEY) is True
        stopped = first.result(20)
        assert time.monotonic() - started < 10
        assert stopped.error == "interrupted" and stopped.text == "Stopped."
        assert second.result(30).text == "echo: next question"
        assert h.runner.interrupt(KEY) is False
    finally:
        h.close()


def test_shutdown_mid_turn_answers_and_leaves_no_claude_process(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.set_reply(hang=True)
    h = RunnerHarness(tmp_path, fake.url, turn_timeout=60.0)
    running = h.runner.submit(KEY, "long job")
    queued = h.runner.submit(KEY, "queued")
    fake.wait_for_requests(1, timeout=20)
    assert len(claude_children()) == 1
    started = time.monotonic()
    h.runner.stop(time.monotonic() + 4.0)
    took = time.monotonic() - started
    assert took < 6.0
    assert claude_children() == []
    assert running.result(1).error == "shutting_down"
    assert queued.result(1).error == "shutting_down"
    late = h.runner.submit(KEY, "after stop").result(1)
    assert late.error == "shutting_down"
    assert h.runner.health().state == "stopped"


def test_child_environment_and_logs_hold_no_secret(fake: FakeAnthropic, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    secrets = {
        "DISCORD_TOKEN": "discord-token-value-93jd8s",
        "TELEGRAM_BOT_TOKEN": "123456789:telegram-token-value-abcdefghijklmnopq",
        "AIWM_AGENT_SECRET": "agent-secret-value-6fh2k1",
        "NOTIFY_SOCKET": "/run/systemd/notify-test",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    api_key = "sk-ant-api-key-value-7hd62kd0"
    for value in (*secrets.values(), api_key):
        logs.register_secret(value)
    sessions = tmp_path / "sessions"
    sessions.mkdir(parents=True)
    # a failed resume makes the CLI write to stderr, which must reach our log masked
    (sessions / "sessions.json").write_text('{"test:1": {"session_id": "21111111-2222-4333-8444-555555555555"}}')
    caplog.set_level(logging.DEBUG)
    h = RunnerHarness(tmp_path, fake.url, api_key=api_key)
    try:
        reply = h.ask("hi")
        [child] = claude_children()
        cwd = Path(child.cwd())
        environ = dict(
            entry.split("=", 1) for entry in Path(f"/proc/{child.pid}/environ").read_text().split("\0") if entry
        )
    finally:
        h.close()
    assert reply.error == "" and reply.fresh_session
    for name, value in secrets.items():
        assert environ.get(name, "") == "", name
        assert value not in "\0".join(environ.values())
    assert environ["ANTHROPIC_API_KEY"] == api_key  # the configured credential, and only that one
    assert environ["CLAUDE_CONFIG_DIR"] == str(tmp_path / "claude" / "config")
    assert environ["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert cwd == tmp_path / "claude" / "work"
    assert "No conversation found" in caplog.text  # the CLI's stderr was captured into our log
    for value in (*secrets.values(), api_key):
        assert value not in caplog.text


def test_a_killed_runner_loop_is_reported_then_restarted_and_answers(fake: FakeAnthropic, tmp_path: Path) -> None:
    from claude_agent_sdk import ClaudeSDKClient

    kills = [SystemExit("killed inside the runner's loop")]

    def factory(options: Any) -> Any:
        if kills:
            raise kills.pop()
        return ClaudeSDKClient(options)

    h = RunnerHarness(tmp_path, fake.url)
    h.runner.client_factory = factory
    try:
        assert h.ask("this kills the loop").error == "crashed"
        end = time.monotonic() + 5
        while h.runner.health().alive and time.monotonic() < end:
            time.sleep(0.01)
        health = h.runner.health()
        assert not health.alive and "runner thread died (SystemExit" in health.detail
        late = h.runner.submit(KEY, "to a dead runner")
        assert late.done() and late.result().error == "not_running"  # at once, never hangs
        h.runner.stop(time.monotonic() + 5)
        h.runner.start()
        reply = h.ask("are you back?")
        assert h.runner.health().alive
    finally:
        h.close()
    assert reply.error == "" and reply.text == "echo: are you back?"
    assert [r.last_user_text for r in fake.message_requests()] == ["are you back?"]


def test_a_full_conversation_refuses_without_a_turn(fake: FakeAnthropic, tmp_path: Path) -> None:
    fake.set_reply("slow answer", delay=1.5)
    h = RunnerHarness(tmp_path, fake.url, queue_limit=2)
    try:
        futures = [h.runner.submit(KEY, f"message {n}") for n in range(6)]
        refused = futures[2:]
        assert all(f.done() and f.result().error == "queue_full" for f in refused)
        assert "too many messages" in refused[0].result().text
        answered = [f.result(60) for f in futures[:2]]
        assert h.runner.health().extra["refused"] == 4
    finally:
        h.close()
    assert [(r.error, r.text) for r in answered] == [("", "slow answer")] * 2
    assert len(fake.message_requests()) == 2  # refused messages never became paid turns
