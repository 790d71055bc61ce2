"""The platform worker's pure helpers (health, restart pacing, replies, refusals, command answers), directly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd import logs
from aiwm_agentd.inbox import open_inbox
from aiwm_agentd.platforms.command_answers import answer_command
from aiwm_agentd.platforms.commands import ADMIN_ONLY_RELOAD, ADMIN_ONLY_STOP, Command
from aiwm_agentd.platforms.errors import describe
from aiwm_agentd.platforms.health import live_health, restart_delay
from aiwm_agentd.platforms.refusals import RefusalGate, refusal
from aiwm_agentd.platforms.replies import late_note, send_text
from aiwm_agentd.workers import ConversationKey, Reply, WorkerHealth

KEY = ConversationKey("telegram", "42")
LOG = logging.getLogger("test.platform_helpers")


def test_live_health_adds_counters_and_a_degraded_inbox_degrades_an_ok_worker(tmp_path: Path) -> None:
    gate = RefusalGate(clock=lambda: 0.0)
    gate.refused(KEY)
    gate.refused(KEY)
    inbox = open_inbox(tmp_path, "telegram")
    health = live_health(WorkerHealth("ok", "connected", extra={"next_retry_s": 1}), 3, gate, inbox)
    assert (health.state, health.extra["sessions"], health.extra["refusals_answered"]) == ("ok", 3, 1)
    assert health.extra["refusals_silenced"] == 1 and health.extra["inbox_pending"] == 0
    assert health.extra["next_retry_s"] == 1
    inbox.degraded = "inbox not writable"
    degraded = live_health(WorkerHealth("ok", "connected"), 3, gate, inbox)
    assert degraded.state == "degraded" and degraded.detail == "connected; inbox not writable"
    assert live_health(WorkerHealth("error", "bad token", alive=False), 0, gate, None).state == "error"


def test_restart_delay_doubles_up_to_the_cap_with_jitter() -> None:
    delays = [restart_delay(attempt, 1.0, 60.0) for attempt in range(8)]
    for attempt, delay in enumerate(delays):
        assert 0.8 * min(60.0, 2**attempt) <= delay <= 1.2 * min(60.0, 2**attempt)


def test_late_note_only_for_a_message_that_waited_or_survived_a_restart() -> None:
    assert late_note(1000.0, 1030.0) == ""
    assert late_note(0.0, 120.0) == "(Late answer to your message of 00:00 UTC: I was restarting or offline.)"
    assert late_note(1000.0, 1001.0, restarted=True).startswith("(Late answer")


def test_refusal_recognises_only_an_immediate_queue_full_reply() -> None:
    full: concurrent.futures.Future[Reply] = concurrent.futures.Future()
    full.set_result(Reply(text="busy", error="queue_full"))
    pending: concurrent.futures.Future[Reply] = concurrent.futures.Future()
    answered: concurrent.futures.Future[Reply] = concurrent.futures.Future()
    answered.set_result(Reply(text="hi"))
    assert refusal(full) is not None and refusal(pending) is None and refusal(answered) is None


class Chunks:
    def __init__(self, fail_at: int = -1) -> None:
        self.sent: list[str] = []
        self.fail_at = fail_at

    async def send(self, text: str) -> None:
        if len(self.sent) == self.fail_at:
            raise RuntimeError("network down")
        self.sent.append(text)

    async def typing(self) -> None:
        pass


def test_send_text_masks_secrets_and_splits_under_the_limit() -> None:
    logs.register_secret("helper-secret-4f8a2c")
    responder = Chunks()
    assert asyncio.run(send_text(responder, "token helper-secret-4f8a2c " + "word " * 100, 100, LOG, "telegram"))
    assert len(responder.sent) > 1 and all(len(chunk) <= 100 for chunk in responder.sent)
    assert "helper-secret-4f8a2c" not in "".join(responder.sent)
    failing = Chunks(fail_at=1)
    assert not asyncio.run(send_text(failing, "word " * 100, 100, LOG, "telegram"))


def test_describe_is_one_masked_line() -> None:
    logs.register_secret("helper-secret-9d1e7b")
    text = describe(ValueError("bad helper-secret-9d1e7b\nsecond line"))
    assert text.startswith("ValueError: bad ") and "helper-secret-9d1e7b" not in text and "second" not in text
    assert describe(KeyboardInterrupt()) == "KeyboardInterrupt"


class FakeRunner:
    busy = False

    def __init__(self) -> None:
        self.interrupted: list[ConversationKey] = []

    def interrupt(self, key: ConversationKey) -> bool:
        self.interrupted.append(key)
        return True

    def reset(self, key: ConversationKey) -> None:
        pass

    def queue_depth(self, key: ConversationKey | None = None) -> int:
        return 2


class FakeControl:
    def status_summary(self) -> dict[str, Any]:
        return {"agent": "a", "controller": "https://ctl.invalid"}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        future.set_result(["model"])
        return future


def answer(name: str, author: str, *, admin: bool, running: str | None, runner: FakeRunner | None = None) -> str:
    return asyncio.run(answer_command(KEY, Command(name), author_id=author, admin=admin, running_sender=running,
                                      runner=runner or FakeRunner(), control=FakeControl(),  # type: ignore[arg-type]
                                      log=LOG, platform="telegram"))


def test_stop_ends_only_your_own_turn_unless_you_are_an_admin() -> None:
    runner = FakeRunner()
    assert answer("stop", "u1", admin=False, running="u2", runner=runner) == ADMIN_ONLY_STOP
    assert runner.interrupted == []
    assert answer("stop", "u1", admin=False, running="u1", runner=runner) == "Stopped the running turn."
    assert answer("stop", "u9", admin=True, running="u2", runner=runner) == "Stopped the running turn."
    assert runner.interrupted == [KEY, KEY]


def test_reload_and_the_full_status_are_for_admins() -> None:
    assert answer("reload", "u1", admin=False, running=None) == ADMIN_ONLY_RELOAD
    assert answer("reload", "u1", admin=True, running=None) == "Reloaded. Changed:\n- model"
    assert "controller" not in answer("status", "u1", admin=False, running=None)
    assert "controller: https://ctl.invalid" in answer("status", "u1", admin=True, running=None)
    with pytest.raises(ValueError):
        answer("dance", "u1", admin=True, running=None)
