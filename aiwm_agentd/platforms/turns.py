"""One run's turns: from an addressed message to its delivered answer, in order, durably.

A `Turns` lives for one run of a platform worker (created at every `start()`, so its asyncio state binds to
that run's loop) and is used on the worker loop only.

Order: an addressed message is submitted to the runner *synchronously* in the library's callback, so the
runner's per-conversation FIFO sees messages in arrival order; the answer is awaited in a task, and each
conversation's answers are sent strictly one after the other, as replies to the triggering message. One
typing loop per conversation runs while any of its turns is pending (not one per queued message), and a
conversation whose queue is full gets one refusal reply per overflow episode (`RefusalGate`).

Durability (issue 10): a message with a platform dedup key is recorded in the worker's `Inbox` before its turn
is submitted and marked done once its answer was delivered. A known key is ignored (redelivered Telegram
updates, Discord history catch-up). Once intake is closed (`intake_open = False`, the first step of a stop),
later messages are only recorded; a turn the runner had to give up (`shutting_down`) leaves its message
pending and its chat gets one "restarting" notice. After a restart `replay_pending()` answers what is
pending, in order, with a late-answer note, and gives up (honestly) a message whose turn was started
`max_attempts` times.

Commands: the sender of each pending turn is remembered per conversation (`running_sender`), so the
worker's command answer can let a non-admin's /stop end only their own turn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aiwm_agentd.inbox import Entry, Inbox
from aiwm_agentd.platforms.commands import Command
from aiwm_agentd.platforms.errors import describe
from aiwm_agentd.platforms.refusals import RefusalGate, refusal
from aiwm_agentd.platforms.replies import Responder, late_note
from aiwm_agentd.runner import failures
from aiwm_agentd.workers import ConversationKey, Reply, Runner

SendText = Callable[[Responder, str], Coroutine[Any, Any, bool]]
AnswerCommand = Callable[[ConversationKey, Command, str], Awaitable[str]]


@dataclass
class _Typing:
    """The one typing loop of a conversation and how many of its turns are still pending."""

    task: asyncio.Task[None]
    turns: int = 1


class Turns:
    """The turns of one run of a platform worker: submission, ordered delivery, typing, inbox marks, replay.

    Its collaborators are explicit: the `runner` takes turns, the `inbox` (None: nothing is durable) records
    them, `send` delivers a text (masked and split by the worker), `answer` carries out a command.
    """

    def __init__(self, platform: str, log: logging.Logger, runner: Runner, inbox: Inbox | None,
                 refusals: RefusalGate, *, typing_interval: float, send: SendText, answer: AnswerCommand) -> None:
        self.platform = platform
        self.log = log
        self.intake_open = True
        self._runner = runner
        self._inbox = inbox
        self._refusals = refusals
        self._typing_interval = typing_interval
        self._send = send
        self._answer = answer
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tails: dict[ConversationKey, asyncio.Future[None]] = {}
        self._typing: dict[ConversationKey, _Typing] = {}
        self._senders: dict[ConversationKey, list[tuple[object, str]]] = {}  # pending turns: (token, author)
        self._in_flight: set[str] = set()  # inbox keys submitted in this run
        self._told_restart: set[ConversationKey] = set()

    # --------------------------------------------------------------------------------------------
    # Tasks of this run.

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run `coro` as a task of this run (cancelled with the session, awaited at stop)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def unfinished(self) -> list[asyncio.Task[Any]]:
        """Tasks still delivering something (answers, notices), typing loops left out: what a stop waits for."""
        typing = {t.task for t in self._typing.values()}
        return [t for t in self._tasks if not t.done() and t not in typing]

    async def cancel(self) -> None:
        """The session ended: cancel every task; their answers are lost, the next session replays them."""
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.2)
        self._tails.clear()
        self._typing.clear()
        self._senders.clear()
        self._in_flight.clear()  # their answers are lost with the session: the next one replays them

    # --------------------------------------------------------------------------------------------
    # Intake.

    def handle_message(self, key: ConversationKey, text: str, command: Command | None, responder: Responder, *,
                       message_key: str = "", address: Mapping[str, str] | None = None,
                       sent_at: float | None = None, author_id: str = "") -> None:
        """See `PlatformWorker.handle_message`."""
        if command is not None:
            self.spawn(self._run_command(key, command, responder, author_id))
            return
        if not text.strip():
            return
        inbox = self._inbox if message_key else None
        if inbox is not None:
            if not inbox.accept(message_key, str(key), text, address or {}):
                self.log.debug("%s: %s already taken; not answering it again", self.platform, message_key)
                return
            if not self.intake_open:
                self.log.info("%s: stopping; %s is kept for after the restart", self.platform, key)
                self.spawn(self._tell_restarting(key, responder))
                return
        note = late_note(sent_at, time.time()) if sent_at is not None else ""
        self._submit(key, text, responder, message_key if inbox is not None else "", note, author_id)

    def _submit(self, key: ConversationKey, text: str, responder: Responder, message_key: str,
                note: str, author_id: str = "") -> None:
        if message_key:
            self._in_flight.add(message_key)
        try:
            future = self._runner.submit(key, text)
        except Exception as exc:
            self.log.error("%s: could not submit a turn for %s: %s", self.platform, key, describe(exc))
            future = concurrent.futures.Future()
            future.set_result(Reply(text="Sorry, I could not take this message right now.", error=str(exc)))
        refused = refusal(future)
        if refused is not None:
            self._on_refused(key, refused, responder)
            self._mark_done(message_key)  # refused honestly: not retried after a restart
            return
        silenced = self._refusals.accepted(key) if key not in self._typing else 0  # drained: episode over
        if silenced:
            self.log.info("%s: %s accepts messages again; %d refused messages were not answered",
                          self.platform, key, silenced)
        previous = self._tails.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = done
        self._senders.setdefault(key, []).append((done, author_id))
        self._typing_begin(key, responder)
        self.spawn(self._finish_turn(key, future, responder, previous, done, message_key, note))

    def _on_refused(self, key: ConversationKey, reply: Reply, responder: Responder) -> None:
        """The runner refused a message (queue full): answer the first refusal of the episode only."""
        if self._refusals.refused(key):
            self.log.warning("%s: %s has too many messages waiting; refusing (one reply per %.0f s)",
                             self.platform, key, self._refusals.quiet)
            self.spawn(self._send(responder, reply.text))
        elif self._refusals.silenced_in(key) == 1:
            self.log.warning("%s: %s is still full; further refused messages are counted, not answered",
                             self.platform, key)

    # --------------------------------------------------------------------------------------------
    # Delivery.

    async def _finish_turn(self, key: ConversationKey, future: concurrent.futures.Future[Reply],
                           responder: Responder, previous: asyncio.Future[None] | None,
                           done: asyncio.Future[None], message_key: str = "", note: str = "") -> None:
        try:
            error = ""
            try:
                reply = await asyncio.wrap_future(future)
                text, error = reply.text, reply.error
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error("%s: turn for %s failed: %s", self.platform, key, describe(exc))
                text = "Sorry, something went wrong while answering."
            if previous is not None:
                await asyncio.shield(previous)
            if message_key and error == failures.SHUTTING_DOWN.code:
                # Kept in the inbox: answered after the restart, not now.
                self._in_flight.discard(message_key)
                await self._tell_restarting(key, responder)
                return
            if note and not error:
                text = f"{note}\n\n{text}"
            if await self._send(responder, text):
                self._mark_done(message_key)
        finally:
            self._typing_end(key)
            self._forget_sender(key, done)
            if not done.done():
                done.set_result(None)
            if self._tails.get(key) is done:
                del self._tails[key]

    def _typing_begin(self, key: ConversationKey, responder: Responder) -> None:
        """One more pending turn in `key`: start its typing loop unless one already runs."""
        typing = self._typing.get(key)
        if typing is not None and not typing.task.done():
            typing.turns += 1
            return
        task = asyncio.get_running_loop().create_task(self._keep_typing(responder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._typing[key] = _Typing(task, typing.turns + 1 if typing is not None else 1)

    def _typing_end(self, key: ConversationKey) -> None:
        """A turn of `key` is answered: stop its typing loop when it was the last one pending."""
        typing = self._typing.get(key)
        if typing is None:
            return
        typing.turns -= 1
        if typing.turns <= 0:
            typing.task.cancel()
            del self._typing[key]

    async def _keep_typing(self, responder: Responder) -> None:
        while True:
            try:
                await responder.typing()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.debug("%s: typing indicator failed: %s", self.platform, describe(exc))
            await asyncio.sleep(self._typing_interval)

    def _forget_sender(self, key: ConversationKey, token: object) -> None:
        senders = self._senders.get(key, [])
        senders[:] = [entry for entry in senders if entry[0] is not token]
        if not senders:
            self._senders.pop(key, None)

    def running_sender(self, key: ConversationKey) -> str | None:
        """The sender of the oldest pending turn of `key` (the one the runner is on); None when idle."""
        senders = self._senders.get(key)
        return senders[0][1] if senders else None

    async def _run_command(self, key: ConversationKey, command: Command, responder: Responder,
                           author_id: str = "") -> None:
        try:
            answer = await self._answer(key, command, author_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("%s: /%s failed: %s", self.platform, command.name, describe(exc))
            answer = f"/{command.name} failed: {describe(exc)}"
        await self._send(responder, answer)

    # --------------------------------------------------------------------------------------------
    # The durable inbox.

    def _mark_done(self, message_key: str) -> None:
        if message_key and self._inbox is not None:
            self._in_flight.discard(message_key)
            self._inbox.done(message_key)

    async def _tell_restarting(self, key: ConversationKey, responder: Responder) -> None:
        """One notice per conversation per stop: its message is kept and answered after the restart."""
        if key in self._told_restart:
            return
        self._told_restart.add(key)
        await self._send(responder, failures.RESTARTING_NOTICE)

    async def replay_pending(self, responder_for: Callable[[Mapping[str, str]], Responder | None]) -> int:
        """Answer what the inbox holds from an earlier run (or a lost session), in acceptance order.

        `responder_for` makes a responder from a recorded address (None: this session cannot reply there).
        Called once the session can send; returns how many were resubmitted."""
        inbox = self._inbox
        if inbox is None:
            return 0
        for given_up in inbox.given_up:
            self.log.warning("%s: gave up a message of %s (too many waiting)", self.platform,
                             given_up.conversation)
        inbox.given_up.clear()
        count = 0
        for entry in inbox.pending():
            if entry.key in self._in_flight:
                continue
            responder = responder_for(entry.address)
            if responder is None:
                continue
            counted = inbox.attempt(entry.key)
            if counted is None:
                continue
            key = ConversationKey.parse(entry.conversation)
            if counted.attempts > inbox.max_attempts:
                self.log.warning("%s: giving up a message of %s after %d attempts", self.platform, key,
                                 counted.attempts - 1)
                self.spawn(self._give_up(entry, responder))
                continue
            count += 1
            self._submit(key, entry.text, responder, entry.key, late_note(entry.accepted_at, time.time(), True),
                         entry.address.get("author", ""))
        if count:
            self.log.info("%s: answering %d message(s) left unanswered by the last run", self.platform, count)
        return count

    async def _give_up(self, entry: Entry, responder: Responder) -> None:
        if await self._send(responder, failures.GIVEN_UP_NOTICE):
            self._mark_done(entry.key)
