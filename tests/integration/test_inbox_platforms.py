"""The durable inbox through the real PTB Application and discord.py Client against the loopback fakes.

Stop with a turn in flight (the chat is told, the message is kept), the replay after a restart (answered once,
in order, with a late note), catch-up of what was sent while stopped (Telegram pending updates, Discord channel
history), restarts that must not answer anything twice, the give-up after too many attempts, a failing disk.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.inbox import open_inbox
from aiwm_agentd.platforms import DiscordWorker, PlatformWorker, TelegramWorker
from aiwm_agentd.runner import failures
from aiwm_agentd.workers import ConversationKey, Reply
from tests.fakes.discord import CHANNEL_ID, FakeDiscord
from tests.fakes.telegram import FakeTelegram
from tests.integration.test_platform_workers import (
    DISCORD_TOKEN,
    GROUP,
    TELEGRAM_TOKEN,
    FakeControl,
    make_config,
    wait_until,
)

MENTION = "@aiwm_test_bot"


class HeldRunner:
    """Runner whose turns are resolved by the test: `answer_all()` echoes, `cut_all()` says shutting_down."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.submits: list[tuple[ConversationKey, str]] = []
        self.futures: list[concurrent.futures.Future[Reply]] = []
        self._lock = threading.Lock()

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        with self._lock:
            self.submits.append((conversation, text))
            self.futures.append(future)
        if self.echo:
            future.set_result(Reply(text=f"echo: {text}"))
        return future

    def cut_all(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(Reply(failures.SHUTTING_DOWN.text, error=failures.SHUTTING_DOWN.code))

    def texts(self) -> list[str]:
        return [text for _key, text in self.submits]

    def reset(self, conversation: ConversationKey) -> None: ...

    def interrupt(self, conversation: ConversationKey) -> bool:
        return False

    def queue_depth(self, conversation: ConversationKey | None = None) -> int:
        return 0

    @property
    def busy(self) -> bool:
        return False


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aiwm-inbox-") as name:
        yield Path(name)


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(TELEGRAM_TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def dc() -> Iterator[FakeDiscord]:
    fake = FakeDiscord(DISCORD_TOKEN).start()
    yield fake
    fake.stop()


def config_for(state_dir: Path, tg: FakeTelegram | None, dc: FakeDiscord | None, **extra: str) -> AgentConfig:
    return make_config(tg, dc, AIWM_STATE_DIR=str(state_dir), **extra)


def started(worker: PlatformWorker) -> PlatformWorker:
    worker.backoff_base = 0.1
    worker.typing_interval = 0.2
    worker.start()
    wait_until(lambda: worker.health().state == "ok", what=f"{worker.name} ok")
    return worker


def telegram(state_dir: Path, tg: FakeTelegram, runner: HeldRunner, **extra: str) -> PlatformWorker:
    return started(TelegramWorker(config_for(state_dir, tg, None, **extra), runner, FakeControl()))


def discord(state_dir: Path, dc: FakeDiscord, runner: HeldRunner) -> PlatformWorker:
    worker = started(DiscordWorker(config_for(state_dir, None, dc), runner, FakeControl()))
    assert isinstance(worker, DiscordWorker)
    wait_until(lambda: not worker._catching_up, what="discord caught up")
    return worker


def graceful_stop(worker: PlatformWorker, runner: HeldRunner) -> None:
    """What WorkerSet.stop does: intake first, the runner gives up its turns, then the platform closes."""
    worker.stop_intake()
    runner.cut_all()
    worker.stop(time.monotonic() + 3)


def test_telegram_stop_with_a_turn_in_flight_tells_the_chat_and_answers_once_after_the_restart(
        state_dir: Path, tg: FakeTelegram) -> None:
    runner = HeldRunner()
    worker = telegram(state_dir, tg, runner)
    first = tg.inject_message(GROUP, f"{MENTION} slow question")
    wait_until(lambda: runner.texts() == ["slow question"], what="the turn submitted")
    worker.stop_intake()
    second = tg.inject_message(GROUP, f"{MENTION} sent during the stop")
    time.sleep(0.5)  # polled, recorded, not submitted
    runner.cut_all()
    worker.stop(time.monotonic() + 3)
    assert runner.texts() == ["slow question"]
    assert [m["text"] for m in tg.sent] == [failures.RESTARTING_NOTICE]  # once for the conversation
    assert [e.text for e in open_inbox(state_dir, "telegram").pending()] == ["slow question", "sent during the stop"]

    after = HeldRunner(echo=True)
    worker = telegram(state_dir, tg, after)
    tg.wait_for_sent(3)
    assert after.texts() == ["slow question", "sent during the stop"]  # in order, before anything new
    late = [m for m in tg.sent[1:]]
    assert [m["reply_parameters"]["message_id"] for m in late] == [first, second]
    assert all(m["text"].startswith("(Late answer") and "echo: " in m["text"] for m in late)
    worker.stop(time.monotonic() + 3)
    assert open_inbox(state_dir, "telegram").pending() == []

    again = HeldRunner(echo=True)
    worker = telegram(state_dir, tg, again)  # a second quick restart
    time.sleep(0.5)
    worker.stop(time.monotonic() + 3)
    assert again.submits == [] and len(tg.sent) == 3


def test_telegram_messages_sent_while_stopped_are_answered_once(state_dir: Path, tg: FakeTelegram) -> None:
    runner = HeldRunner(echo=True)
    telegram(state_dir, tg, runner).stop(time.monotonic() + 3)
    tg.inject_message(GROUP, f"{MENTION} one")
    tg.inject_message(GROUP, f"{MENTION} two")
    tg.inject_message(GROUP, f"{MENTION} too old", sent_ago=4000)
    worker = telegram(state_dir, tg, runner, TELEGRAM_CATCHUP_WINDOW="3600")
    tg.wait_for_sent(2)
    worker.stop(time.monotonic() + 3)
    worker = telegram(state_dir, tg, runner)
    time.sleep(0.5)
    worker.stop(time.monotonic() + 3)
    assert runner.texts() == ["one", "two"]
    assert [m["text"] for m in tg.sent] == ["echo: one", "echo: two"]


def test_discord_messages_sent_while_stopped_are_caught_up_from_the_history_once(
        state_dir: Path, dc: FakeDiscord) -> None:
    runner = HeldRunner(echo=True)
    discord(state_dir, dc, runner).stop(time.monotonic() + 3)
    wait_until(lambda: dc.connected == 0, what="disconnected")
    dc.inject_message(CHANNEL_ID, "while away one", mention_bot=True)
    dc.inject_message(CHANNEL_ID, "not for the bot")
    dc.inject_message(CHANNEL_ID, "while away two", mention_bot=True)
    worker = discord(state_dir, dc, runner)
    dc.wait_for_sent(2)
    live = dc.inject_message(CHANNEL_ID, "live", mention_bot=True)
    dc.wait_for_sent(3)
    worker.stop(time.monotonic() + 3)
    worker = discord(state_dir, dc, runner)  # two quick restarts: the history overlaps, nothing twice
    worker.stop(time.monotonic() + 3)
    worker = discord(state_dir, dc, runner)
    time.sleep(0.3)
    worker.stop(time.monotonic() + 3)
    assert runner.texts() == ["while away one", "while away two", "live"]
    assert [m["content"] for m in dc.sent] == ["echo: while away one", "echo: while away two", "echo: live"]
    assert int(dc.sent[2]["message_reference"]["message_id"]) == live


def test_discord_stop_with_a_turn_in_flight_replies_after_the_restart(state_dir: Path, dc: FakeDiscord) -> None:
    runner = HeldRunner()
    worker = discord(state_dir, dc, runner)
    asked = dc.inject_message(CHANNEL_ID, "slow", mention_bot=True)
    wait_until(lambda: runner.texts() == ["slow"], what="the turn submitted")
    graceful_stop(worker, runner)
    assert [m["content"] for m in dc.sent] == [failures.RESTARTING_NOTICE]
    after = HeldRunner(echo=True)
    worker = discord(state_dir, dc, after)
    dc.wait_for_sent(2)
    worker.stop(time.monotonic() + 3)
    assert after.texts() == ["slow"]
    assert dc.sent[1]["content"].startswith("(Late answer") and dc.sent[1]["content"].endswith("echo: slow")
    assert int(dc.sent[1]["message_reference"]["message_id"]) == asked


def test_a_message_that_keeps_being_cut_is_given_up_honestly(state_dir: Path, tg: FakeTelegram) -> None:
    tg.inject_message(GROUP, f"{MENTION} poison")
    runner = HeldRunner()
    for _restart in range(3):  # attempts 1..3: each run starts its turn and is stopped in the middle
        worker = telegram(state_dir, tg, runner)
        wait_until(lambda n=_restart + 1: len(runner.submits) == n, what="the turn (re)submitted")
        graceful_stop(worker, runner)
    worker = telegram(state_dir, tg, runner)
    tg.wait_for_sent(4)
    worker.stop(time.monotonic() + 3)
    assert len(runner.submits) == 3
    assert [m["text"] for m in tg.sent][-1] == failures.GIVEN_UP_NOTICE
    assert open_inbox(state_dir, "telegram").pending() == []


def test_a_full_disk_is_a_visible_degradation_and_messages_are_still_answered(
        state_dir: Path, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = HeldRunner(echo=True)
    worker = telegram(state_dir, tg, runner)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("aiwm_agentd.inbox.os.fsync", no_space)
    tg.inject_message(GROUP, f"{MENTION} still answered")
    tg.wait_for_sent(1)
    wait_until(lambda: worker.health().state == "degraded", what="degraded health")
    assert "No space left on device" in worker.health().detail
    assert worker.health().extra["inbox"]
    monkeypatch.undo()
    tg.inject_message(GROUP, f"{MENTION} disk is back")
    tg.wait_for_sent(2)
    wait_until(lambda: worker.health().state == "ok", what="ok again")
    worker.stop(time.monotonic() + 3)


def test_a_turn_that_finishes_during_the_stop_is_delivered_before_the_client_closes(
        state_dir: Path, tg: FakeTelegram) -> None:
    runner = HeldRunner()
    worker = telegram(state_dir, tg, runner)
    tg.inject_message(GROUP, f"{MENTION} nearly done")
    wait_until(lambda: len(runner.futures) == 1, what="the turn submitted")
    worker.stop_intake()
    threading.Timer(0.3, lambda: runner.futures[0].set_result(Reply("finished in time"))).start()
    worker.stop(time.monotonic() + 3)  # returns only after the answer went out
    assert [m["text"] for m in tg.sent] == ["finished in time"]
    assert open_inbox(state_dir, "telegram").pending() == []
