"""The real PTB Application and the real discord.py Client, driven through the workers against loopback fakes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig, build_agent_config, load_daemon_settings
from aiwm_agentd.platforms import DiscordWorker, TelegramWorker, build_platform_workers
from aiwm_agentd.runner.failures import QUEUE_FULL
from aiwm_agentd.workers import ConversationKey, Reply
from tests.fakes.discord import BOT_ID, CHANNEL_ID, OTHER_CHANNEL_ID, FakeDiscord
from tests.fakes.telegram import FakeTelegram

# Not token-shaped on purpose: only registration + the masking filter can keep them out of the logs.
TELEGRAM_TOKEN = "424242:tg-secret-value-xyz"
DISCORD_TOKEN = "dc-secret-value.abc.def-123"
GROUP = -1001
OTHER_GROUP = -1002


class FakeRunner:
    """The Runner protocol: answers `answer(text)` after `delay`, one turn at a time, in submit order.

    `limit` > 0 refuses (queue_full, like ClaudeRunner) while that many messages are pending;
    `die_next` makes the next submit raise SystemExit inside the worker's loop (kills it)."""

    def __init__(self) -> None:
        self.answer: Callable[[str], str] = lambda text: f"echo: {text}"
        self.delay = 0.0
        self.limit = 0
        self.die_next = False
        self.refused = 0
        self.submits: list[tuple[ConversationKey, str]] = []
        self.resets: list[ConversationKey] = []
        self.interrupts: list[ConversationKey] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, conversation: ConversationKey, text: str) -> concurrent.futures.Future[Reply]:
        if self.die_next:
            self.die_next = False
            raise SystemExit("killed inside the worker's loop")
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        with self._lock:
            if self.limit and self._pending >= self.limit:
                self.refused += 1
                future.set_result(Reply(text=QUEUE_FULL.text, error=QUEUE_FULL.code))
                return future
            self._pending += 1
        self.submits.append((conversation, text))
        if not self.delay:
            self._done()
            future.set_result(Reply(text=self.answer(text)))
            return future

        def turn() -> Reply:
            time.sleep(self.delay)
            self._done()
            return Reply(text=self.answer(text))

        return self._pool.submit(turn)

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def reset(self, conversation: ConversationKey) -> None:
        self.resets.append(conversation)

    def interrupt(self, conversation: ConversationKey) -> bool:
        self.interrupts.append(conversation)
        return True

    def queue_depth(self, conversation: ConversationKey | None = None) -> int:
        return 0

    @property
    def busy(self) -> bool:
        return False


class FakeControl:
    def __init__(self) -> None:
        self.reloads = 0

    def status_summary(self) -> dict[str, Any]:
        return {"agent": "test-agent", "controller": "local", "model": "claude-haiku-4-5"}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        self.reloads += 1
        future: concurrent.futures.Future[list[str]] = concurrent.futures.Future()
        future.set_result(["telegram.target_ids: -1001 -> -1001,-1002"])
        return future


def make_config(tg: FakeTelegram | None, dc: FakeDiscord | None, **extra: str) -> AgentConfig:
    # A fresh state dir each time: the workers' inboxes must not carry message ids from one test to the next.
    env = {"AIWM_ENABLED": "false", "AIWM_STATE_DIR": tempfile.mkdtemp(prefix="aiwm-platforms-")}
    if tg is not None:
        env.update(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_GROUP_ID=str(GROUP), TELEGRAM_API_BASE_URL=tg.url)
    if dc is not None:
        env.update(DISCORD_TOKEN=dc.token, DISCORD_CHANNEL_ID=str(CHANNEL_ID), DISCORD_API_BASE_URL=dc.api_url,
                   DISCORD_GATEWAY_URL=dc.gateway_url)
    env.update(extra)
    return build_agent_config(env, None, load_daemon_settings(env))


@dataclasses.dataclass
class Rig:
    tg: FakeTelegram
    dc: FakeDiscord
    runner: FakeRunner
    control: FakeControl
    telegram: TelegramWorker
    discord: DiscordWorker

    def workers(self) -> list[TelegramWorker | DiscordWorker]:
        return [self.telegram, self.discord]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG (httpx URLs included), through the daemon's masking filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.SecretMaskingFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def rig(captured_log: io.StringIO) -> Iterator[Rig]:
    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    dc = FakeDiscord(DISCORD_TOKEN).start()
    runner, control = FakeRunner(), FakeControl()
    workers = build_platform_workers(make_config(tg, dc), runner, control)
    discord_worker, telegram_worker = workers
    assert isinstance(discord_worker, DiscordWorker) and isinstance(telegram_worker, TelegramWorker)
    for w in (discord_worker, telegram_worker):
        w.backoff_base = 0.1
        w.typing_interval = 0.2
        w.start()
    rig = Rig(tg, dc, runner, control, telegram_worker, discord_worker)
    wait_until(lambda: all(w.health().state == "ok" for w in rig.workers()), what="both workers ok")
    yield rig
    for w in rig.workers():
        w.stop(time.monotonic() + 2)
    tg.stop()
    dc.stop()
    text = captured_log.getvalue()
    assert TELEGRAM_TOKEN not in text and DISCORD_TOKEN not in text


def telegram_texts(rig: Rig) -> list[str]:
    return [m["text"] for m in rig.tg.sent]


# ------------------------------------------------------------------------------------------------------
# Who is answered


def test_telegram_answers_only_addressed_messages_in_allowed_groups(rig: Rig) -> None:
    rig.tg.inject_message(OTHER_GROUP, "@aiwm_test_bot other group")
    rig.tg.inject_message(GROUP, "@aiwm_test_bot from a bot", from_bot=True, from_id=555)
    rig.tg.inject_message(GROUP, "not addressed to anyone")
    rig.tg.inject_message(42, "a direct message")
    rig.tg.inject_message(GROUP, "/new@another_bot")
    first = rig.tg.inject_message(GROUP, "@aiwm_test_bot hello there")
    rig.tg.inject_message(GROUP, "replying to you", reply_to_bot=True)
    sent = rig.tg.wait_for_sent(2)
    time.sleep(0.2)
    assert [m["text"] for m in rig.tg.sent] == ["echo: hello there", "echo: replying to you"]
    assert sent[0]["chat_id"] == str(GROUP)
    assert sent[0]["reply_parameters"]["message_id"] == first
    assert [key for key, _ in rig.runner.submits] == [ConversationKey("telegram", str(GROUP))] * 2
    assert rig.runner.resets == []


def test_discord_answers_only_addressed_messages_in_allowed_channels(rig: Rig) -> None:
    rig.dc.inject_message(OTHER_CHANNEL_ID, "other channel", mention_bot=True)
    rig.dc.inject_message(CHANNEL_ID, "from another bot", mention_bot=True, author_bot=True, author_id=555)
    rig.dc.inject_message(CHANNEL_ID, "from itself", mention_bot=True, author_id=BOT_ID, author_bot=True)
    rig.dc.inject_message(CHANNEL_ID, "not addressed")
    rig.dc.inject_message(CHANNEL_ID, "a direct message", direct=True)
    first = rig.dc.inject_message(CHANNEL_ID, "hello there", mention_bot=True)
    rig.dc.inject_message(CHANNEL_ID, "replying to you", reply_to_bot=True)
    sent = rig.dc.wait_for_sent(2)
    time.sleep(0.2)
    assert [m["content"] for m in rig.dc.sent] == ["echo: hello there", "echo: replying to you"]
    assert sent[0]["channel_id"] == CHANNEL_ID
    assert sent[0]["message_reference"]["message_id"] == first
    assert CHANNEL_ID in rig.dc.typing


def test_direct_messages_when_allowed_and_everything_without_require_mentions(rig: Rig) -> None:
    config = make_config(rig.tg, rig.dc, TELEGRAM_ALLOW_DMS="true", DISCORD_REQUIRE_MENTION="false",
                         TELEGRAM_ALLOWED_USER_IDS="42")  # direct messages are answered from listed users only
    sessions = (rig.telegram.sessions_started, rig.discord.sessions_started)
    for w in rig.workers():
        w.apply(config)
    rig.tg.inject_message(42, "private hello")
    rig.dc.inject_message(CHANNEL_ID, "no mention needed")
    assert rig.tg.wait_for_sent(1)[0]["text"] == "echo: private hello"
    assert rig.dc.wait_for_sent(1)[0]["content"] == "echo: no mention needed"
    assert (rig.telegram.sessions_started, rig.discord.sessions_started) == sessions  # no reconnect


# ------------------------------------------------------------------------------------------------------
# Replies


def long_answer() -> str:
    parts = []
    for i in range(40):
        parts.append(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 6)
        if i % 5 == 0:
            parts.append("```python\n" + "\n".join(f"print({i}, {j})  # line {j}" for j in range(25)) + "\n```")
    text = "\n\n".join(parts)
    assert len(text) >= 9000
    return text


def _fences_balanced(chunk: str) -> bool:
    return sum(line.startswith("```") for line in chunk.split("\n")) % 2 == 0


def _body(chunks: list[str]) -> list[str]:
    return [ln.rstrip() for c in chunks for ln in c.split("\n") if ln.strip() and not ln.startswith("```")]


def test_long_answer_arrives_in_ordered_chunks_under_the_limit(rig: Rig) -> None:
    answer = long_answer()
    rig.runner.answer = lambda text: answer
    rig.tg.inject_message(GROUP, "@aiwm_test_bot long please")
    rig.dc.inject_message(CHANNEL_ID, "long please", mention_bot=True)
    def discord_texts() -> list[str]:
        return [m["content"] for m in rig.dc.sent]

    sources: list[tuple[int, Callable[[], list[str]]]] = [(4096, lambda: telegram_texts(rig)), (2000, discord_texts)]
    for limit, get in sources:
        wait_until(lambda: _body(get()) == _body([answer]), what=f"all chunks (limit {limit})")  # noqa: B023
        chunks = get()
        assert len(chunks) >= 9000 // limit + 1
        assert all(len(c) <= limit and _fences_balanced(c) for c in chunks)
    assert all(m["reply_parameters"]["message_id"] for m in rig.tg.sent)


def test_three_quick_messages_get_three_ordered_answers(rig: Rig) -> None:
    rig.runner.delay = 0.05
    for n in range(3):
        rig.tg.inject_message(GROUP, f"@aiwm_test_bot question {n}")
        rig.dc.inject_message(CHANNEL_ID, f"question {n}", mention_bot=True)
    rig.tg.wait_for_sent(3)
    rig.dc.wait_for_sent(3)
    assert telegram_texts(rig) == [f"echo: question {n}" for n in range(3)]
    assert [m["content"] for m in rig.dc.sent] == [f"echo: question {n}" for n in range(3)]


def test_typing_is_kept_alive_for_the_whole_turn(rig: Rig) -> None:
    rig.runner.delay = 0.7
    rig.tg.inject_message(GROUP, "@aiwm_test_bot slow one")
    rig.tg.wait_for_sent(1)
    typing = [a for a in rig.tg.actions if a["action"] == "typing"]
    assert len(typing) >= 3  # every 0.2 s (4 s in production) while the turn runs
    count = len(rig.tg.actions)
    time.sleep(0.5)
    assert len(rig.tg.actions) == count  # and stops with it


def test_telegram_429_is_honoured(rig: Rig) -> None:
    rig.tg.rate_limit(times=1, retry_after=1)
    began = time.monotonic()
    rig.tg.inject_message(GROUP, "@aiwm_test_bot hi")
    assert rig.tg.wait_for_sent(1)[0]["text"] == "echo: hi"
    assert time.monotonic() - began >= 1.0
    assert [s for m, s in rig.tg.calls if m == "sendMessage"] == [429, 200]


# ------------------------------------------------------------------------------------------------------
# Commands


def test_chat_commands(rig: Rig) -> None:
    admins = make_config(rig.tg, rig.dc, TELEGRAM_ADMIN_USER_IDS="42", DISCORD_ADMIN_USER_IDS="42")
    for w in rig.workers():
        w.apply(admins)  # /reload is for admins (the fakes' default sender is user 42)
    rig.tg.inject_message(GROUP, "/new")
    assert rig.tg.wait_for_sent(1)[0]["text"].startswith("Started a fresh session")
    assert rig.runner.resets == [ConversationKey("telegram", str(GROUP))]
    rig.dc.inject_message(CHANNEL_ID, "/new", mention_bot=True)
    rig.dc.wait_for_sent(1)
    assert rig.runner.resets[-1] == ConversationKey("discord", str(CHANNEL_ID))
    rig.tg.inject_message(GROUP, "/status@aiwm_test_bot")
    status = rig.tg.wait_for_sent(2)[1]["text"]
    assert "agent: test-agent" in status and "queue (this chat): 0" in status
    rig.tg.inject_message(GROUP, "/stop")
    assert rig.tg.wait_for_sent(3)[2]["text"] == "Stopped the running turn."
    assert rig.runner.interrupts == [ConversationKey("telegram", str(GROUP))]
    rig.tg.inject_message(GROUP, "/reload")
    assert "telegram.target_ids" in rig.tg.wait_for_sent(4)[3]["text"]
    assert rig.control.reloads == 1
    assert [text for _, text in rig.runner.submits] == []  # commands never reach the model


# ------------------------------------------------------------------------------------------------------
# Health, failures and recovery


def test_revoked_telegram_token_is_an_error_while_discord_keeps_answering(
    rig: Rig, captured_log: io.StringIO
) -> None:
    rig.tg.revoke()
    wait_until(lambda: rig.telegram.health().state == "error", what="telegram error state")
    health = rig.telegram.health()
    assert "rejected the bot token" in health.detail and health.alive
    rig.dc.inject_message(CHANNEL_ID, "still there?", mention_bot=True)
    assert rig.dc.wait_for_sent(1)[0]["content"] == "echo: still there?"
    assert rig.discord.health().state == "ok"
    assert captured_log.getvalue().count("Telegram rejected the bot token") == 1


def test_killing_and_restarting_the_discord_server_recovers(rig: Rig) -> None:
    rig.dc.kill()
    wait_until(lambda: rig.discord.health().state == "degraded", what="discord degraded")
    time.sleep(0.3)
    rig.dc.restart()
    # discord.py reconnects with its own exponential backoff (uniform 0..2**failures s): the failures during
    # the outage (up to one monitor period, 5 s) can put the next attempt 16-32 s away.
    rig.dc.wait_ready(60)
    wait_until(lambda: rig.discord.health().state == "ok", 15, what="discord ok again")
    rig.dc.inject_message(CHANNEL_ID, "back?", mention_bot=True)
    assert rig.dc.wait_for_sent(1)[0]["content"] == "echo: back?"
    assert rig.discord.sessions_started == 1  # the library reconnected by itself


def test_stop_with_both_connected_is_fast(rig: Rig) -> None:
    rig.runner.delay = 5.0  # a turn in flight must not hold the stop
    rig.tg.inject_message(GROUP, "@aiwm_test_bot busy")
    wait_until(lambda: bool(rig.runner.submits), what="turn submitted")
    began = time.monotonic()
    deadline = began + 1.0
    threads = [threading.Thread(target=w.stop, args=(deadline,)) for w in rig.workers()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - began < 1.0
    assert [w.health().state for w in rig.workers()] == ["stopped", "stopped"]


def test_hot_reload_restarts_only_the_worker_whose_token_changed(rig: Rig) -> None:
    config = make_config(rig.tg, rig.dc, TELEGRAM_GROUP_ID=f"{GROUP},{OTHER_GROUP}")
    for w in rig.workers():
        w.apply(config)
    rig.tg.inject_message(OTHER_GROUP, "@aiwm_test_bot newly allowed")
    assert rig.tg.wait_for_sent(1)[0]["text"] == "echo: newly allowed"
    assert (rig.telegram.sessions_started, rig.discord.sessions_started) == (1, 1)

    rig.dc.token = "dc-rotated-token.zzz.999"
    config = make_config(rig.tg, rig.dc)
    for w in rig.workers():
        w.apply(config)
    wait_until(lambda: rig.discord.sessions_started == 2 and rig.discord.health().state == "ok",
               what="discord reconnected with the new token")
    assert rig.telegram.sessions_started == 1


def test_a_platform_configured_later_is_started_by_apply(captured_log: io.StringIO) -> None:
    tg = FakeTelegram(TELEGRAM_TOKEN).start()
    runner = FakeRunner()
    try:
        workers = build_platform_workers(make_config(None, None), runner, FakeControl())
        for w in workers:
            w.start()
        wait_until(lambda: all(w.health().state == "stopped" for w in workers), what="idle workers")
        for w in workers:
            w.apply(make_config(tg, None))
        wait_until(lambda: workers[1].health().state == "ok", what="telegram started by apply")
        assert workers[0].health().state == "stopped"
        tg.inject_message(GROUP, "@aiwm_test_bot hi")
        assert tg.wait_for_sent(1)[0]["text"] == "echo: hi"
    finally:
        for w in workers:
            w.stop(time.monotonic() + 2)
        tg.stop()


def test_rejected_discord_token_and_missing_intent_are_configuration_errors(captured_log: io.StringIO) -> None:
    dc = FakeDiscord(DISCORD_TOKEN, privileged_ok=False).start()
    wrong = FakeDiscord("another-token-entirely").start()
    try:
        for fake, config_fake, expected in ((dc, dc, "Message Content"), (wrong, dc, "rejected the bot token")):
            config = make_config(None, config_fake, DISCORD_API_BASE_URL=fake.api_url,
                                 DISCORD_GATEWAY_URL=fake.gateway_url)
            worker = DiscordWorker(config, FakeRunner(), FakeControl())
            worker.start()
            try:
                wait_until(lambda: worker.health().state == "error", what="discord error")  # noqa: B023
                assert expected in worker.health().detail
            finally:
                worker.stop(time.monotonic() + 2)
    finally:
        dc.stop()
        wrong.stop()
    assert DISCORD_TOKEN not in captured_log.getvalue()


# ------------------------------------------------------------------------------------------------------
# Lifecycle: a killed loop, restarts, misuse


@pytest.mark.parametrize("platform", ["telegram", "discord"])
def test_a_killed_loop_shows_dead_then_stop_and_start_answer_again(rig: Rig, platform: str) -> None:
    worker = rig.telegram if platform == "telegram" else rig.discord

    def inject(text: str) -> None:
        if platform == "telegram":
            rig.tg.inject_message(GROUP, f"@aiwm_test_bot {text}")
        else:
            rig.dc.inject_message(CHANNEL_ID, text, mention_bot=True)

    def answers() -> list[str]:
        return telegram_texts(rig) if platform == "telegram" else [m["content"] for m in rig.dc.sent]

    rig.runner.die_next = True
    inject("this one kills the loop")
    wait_until(lambda: not worker.health().alive, what=f"{platform} reported dead")
    health = worker.health()
    assert health.state == "error" and "worker thread died (SystemExit" in health.detail
    worker.stop(time.monotonic() + 2)
    assert not worker.health().alive  # stop() does not hide the death; start() clears it
    worker.start()
    wait_until(lambda: worker.health().state == "ok", 15, what=f"{platform} ok after restart")
    assert worker.health().alive and worker.sessions_started == 2
    inject("are you back?")
    wait_until(lambda: "echo: are you back?" in answers(), 15, what="an answer after the restart")


def test_start_while_running_raises_and_start_after_stop_works(rig: Rig) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        rig.telegram.start()
    rig.telegram.stop(time.monotonic() + 2)
    assert rig.telegram.health().state == "stopped" and rig.telegram.health().alive
    rig.telegram.start()
    wait_until(lambda: rig.telegram.health().state == "ok", what="telegram ok after a restart")
    rig.tg.inject_message(GROUP, "@aiwm_test_bot again")
    assert rig.tg.wait_for_sent(1)[0]["text"] == "echo: again"


# ------------------------------------------------------------------------------------------------------
# Storms: one typing loop per conversation, one refusal reply per overflow episode


def test_queued_messages_share_one_typing_loop_per_conversation(rig: Rig) -> None:
    rig.runner.delay = 0.15
    count = 8
    began = time.monotonic()
    for n in range(count):
        rig.tg.inject_message(GROUP, f"@aiwm_test_bot queued {n}")
        rig.dc.inject_message(CHANNEL_ID, f"queued {n}", mention_bot=True)
    rig.tg.wait_for_sent(count, timeout=20)
    rig.dc.wait_for_sent(count, timeout=20)
    elapsed = time.monotonic() - began
    # One loop per conversation sends about elapsed / interval; one loop per queued message sent ~5x that.
    ceiling = elapsed / rig.telegram.typing_interval + 3
    telegram_typing = sum(1 for a in rig.tg.actions if a["action"] == "typing")
    discord_typing = rig.dc.typing.count(CHANNEL_ID)
    assert telegram_typing <= ceiling, (telegram_typing, elapsed)
    assert discord_typing <= ceiling, (discord_typing, elapsed)
    assert telegram_typing >= 2 and discord_typing >= 2  # and it does keep typing while the queue drains
    assert telegram_texts(rig) == [f"echo: queued {n}" for n in range(count)]
    settled = len(rig.tg.actions)
    time.sleep(3 * rig.telegram.typing_interval)
    assert len(rig.tg.actions) == settled  # stopped with the last answer


def test_a_storm_into_a_full_conversation_gets_one_refusal_reply(rig: Rig) -> None:
    rig.runner.delay, rig.runner.limit = 0.3, 2
    storm = 12
    for n in range(storm):
        rig.tg.inject_message(GROUP, f"@aiwm_test_bot storm {n}")
    wait_until(lambda: rig.runner.refused == storm - 2, what="the runner refused the rest")
    rig.tg.wait_for_sent(3)
    time.sleep(0.3)
    texts = telegram_texts(rig)
    assert texts.count(QUEUE_FULL.text) == 1
    assert [t for t in texts if t != QUEUE_FULL.text] == ["echo: storm 0", "echo: storm 1"]
    extra = rig.telegram.health().extra
    assert (extra["refusals_answered"], extra["refusals_silenced"]) == (1, storm - 3)
    rig.tg.inject_message(GROUP, "@aiwm_test_bot after the storm")  # accepted: the episode is over
    wait_until(lambda: "echo: after the storm" in telegram_texts(rig), what="answer after the storm")
    rig.runner.delay = 1.0
    for n in range(4):  # a new episode gets its own (single) refusal
        rig.tg.inject_message(GROUP, f"@aiwm_test_bot second storm {n}")
    wait_until(lambda: telegram_texts(rig).count(QUEUE_FULL.text) == 2, what="a second episode's refusal")
    time.sleep(0.2)
    assert telegram_texts(rig).count(QUEUE_FULL.text) == 2


def test_a_message_let_in_while_the_queue_drains_does_not_restart_the_refusals(rig: Rig) -> None:
    rig.runner.delay, rig.runner.limit = 0.4, 2
    for n in range(5):  # 2 accepted, 3 refused: one refusal reply
        rig.tg.inject_message(GROUP, f"@aiwm_test_bot first {n}")
    wait_until(lambda: "echo: first 0" in telegram_texts(rig), what="the first answer (one slot free)")
    rig.tg.inject_message(GROUP, "@aiwm_test_bot slips in")  # accepted, but the conversation is still busy
    wait_until(lambda: len(rig.runner.submits) == 3, what="the third message accepted")
    for n in range(3):
        rig.tg.inject_message(GROUP, f"@aiwm_test_bot refused again {n}")
    wait_until(lambda: rig.runner.refused >= 4, what="refused again")
    wait_until(lambda: "echo: slips in" in telegram_texts(rig), what="all answers")
    assert telegram_texts(rig).count(QUEUE_FULL.text) == 1
    assert rig.telegram.health().extra["refusals_silenced"] == rig.runner.refused - 1
