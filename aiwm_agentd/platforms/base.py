"""The plumbing shared by the chat platforms: sessions, restarts, health, turns (the thread is a LoopThread).

A `PlatformWorker` runs one library client (a discord.py `Client`, a PTB `Application`) on a `LoopThread`:
`start()` returns at once, works again after `stop()` or after the loop died, and `health()` says
`alive=False` when it died so the supervisor restarts it. Its main coroutine: while enabled, run a *session*
(a fresh client, connected, monitored); when the session fails, restart it with exponential backoff, or with
a long backoff when the platform rejected our configuration (`ConfigurationError`: bad token, missing
intent), which is logged once and shown in `health()`.

Turns: an addressed message is submitted to the runner *synchronously* in the library's callback, so the
runner's per-conversation FIFO sees messages in arrival order; the answer is awaited in a task, and each
conversation's answers are sent strictly one after the other, as replies to the triggering message. One
typing loop per conversation runs while any of its turns is pending (not one per queued message), and a
conversation whose queue is full gets one refusal reply per overflow episode, not one per refused message.

Durability (issue 10): a message with a platform dedup key is recorded in the worker's `Inbox` before its turn
is submitted and marked done once its answer was delivered. A known key is ignored (redelivered Telegram
updates, Discord history catch-up). At stop, `stop_intake()` comes first: later messages are only recorded;
running turns get the rest of the deadline (`_drain_turns`), and a turn the runner had to give up
(`shutting_down`) leaves its message pending and its chat gets one "restarting" notice while the platform
is still up. After a restart `_replay_pending()` answers what is pending, in order, with a late-answer note,
and gives up (honestly) a message whose turn was started `max_attempts` times.

Access (issue 9, docs-access.md): the subclasses pass each message's sender (`author_id`); who may talk is
decided before (addressing.should_answer), which command a sender may use here (`_command_answer`): the
sender of each pending turn is remembered per conversation, so a non-admin's /stop only stops their own
turn. Every outgoing text goes through `logs.mask` (`send_text`): a backstop for a secret that reached a
reply, in any of its encoded forms.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig, PlatformConfig
from aiwm_agentd.inbox import Entry, Inbox, open_inbox
from aiwm_agentd.loopthread import LoopNotRunning, LoopState, LoopThread
from aiwm_agentd.platforms.addressing import is_admin
from aiwm_agentd.platforms.commands import (
    ADMIN_ONLY_RELOAD,
    ADMIN_ONLY_STOP,
    Command,
    format_reload,
    format_status,
)
from aiwm_agentd.platforms.split import split_message
from aiwm_agentd.runner import failures
from aiwm_agentd.workers import ConversationKey, DaemonControl, HealthState, Reply, Runner, WorkerHealth

RELOAD_TIMEOUT = 60.0
# How long one refusal reply covers a conversation whose queue stays full.
REFUSAL_QUIET = 30.0
# Kept back from the stop deadline to close the library client (after the last answers were sent).
CLOSE_BUDGET = 1.5
# A message older than this when its turn is submitted gets a late-answer note.
LATE_AFTER = 60.0


class ConfigurationError(Exception):
    """The platform refused our configuration; retrying soon cannot help. The message is safe to log."""


class Responder(Protocol):
    """How a turn answers the message that triggered it."""

    async def send(self, text: str) -> None:
        """Send one chunk (already under the platform limit) as a reply to the triggering message."""

    async def typing(self) -> None:
        """Show the typing indicator once."""


def connection_fields(config: PlatformConfig) -> tuple[object, ...]:
    """What a running client depends on: a change here needs a fresh client."""
    return (config.enabled, config.token, config.api_base_url, config.gateway_url)


@dataclass
class _Episode:
    began: float
    silenced: int = 0


class RefusalGate:
    """Decides which `queue_full` refusals are answered: the first of an overflow episode only.

    An episode starts with a refusal and ends when the conversation has drained (`accepted()`: the caller
    says a message was accepted while none of the conversation's turns was pending), or `quiet` seconds
    after its answered refusal (then the next refusal is answered again, so a user who keeps writing into a
    stuck conversation is told again now and then). A message accepted while the queue is still draining
    does not end it: otherwise every freed slot would let one message in and the next refusal be answered.
    Refusals not answered are counted, and logged when the episode ends. Not thread-safe: the loop only.
    """

    def __init__(self, quiet: float = REFUSAL_QUIET, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self._clock = clock
        self._episodes: dict[ConversationKey, _Episode] = {}
        self.answered = 0
        self.silenced = 0

    def refused(self, key: ConversationKey) -> bool:
        """A message of `key` was refused; True when this refusal should be answered."""
        now = self._clock()
        episode = self._episodes.get(key)
        if episode is not None and now - episode.began < self.quiet:
            episode.silenced += 1
            self.silenced += 1
            return False
        # A refusal answered again after `quiet` continues the episode: its unanswered count is logged once.
        self._episodes[key] = _Episode(now, episode.silenced if episode is not None else 0)
        self.answered += 1
        return True

    def accepted(self, key: ConversationKey) -> int:
        """`key` drained (a message accepted with nothing pending): the episode ends; returns how many
        refusals went unanswered in it."""
        episode = self._episodes.pop(key, None)
        return episode.silenced if episode is not None else 0

    def silenced_in(self, key: ConversationKey) -> int:
        episode = self._episodes.get(key)
        return episode.silenced if episode is not None else 0


@dataclass
class _Typing:
    """The one typing loop of a conversation and how many of its turns are still pending."""

    task: asyncio.Task[None]
    turns: int = 1


class PlatformWorker(abc.ABC):
    """A `workers.Worker` for one chat platform. Subclasses implement `_session` and the message glue."""

    name: str = ""
    message_limit: int = 2000
    typing_interval: float = 5.0
    # Restart backoff: base * 2**attempt up to the cap, with jitter; long after a configuration error.
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    config_error_backoff: float = 600.0
    # How often the session's connection state is probed and re-published (counters and the inbox's state are
    # read live by health()); stop, restart and reload wake the monitor at once.
    monitor_interval: float = 5.0

    def __init__(self, config: AgentConfig, runner: Runner, control: DaemonControl) -> None:
        self.log = logging.getLogger(f"aiwm_agentd.platforms.{self.name}")
        self._agent = config
        self._config = config.platform(self.name)
        self._runner = runner
        self._control = control
        self._loop_thread = LoopThread(f"platform-{self.name}", request_stop=self._request_stop)
        self._wake = asyncio.Event()
        self._stopping = False
        self._restart_requested = False
        self._deadline = float("inf")
        self._health = WorkerHealth("stopped", "not started")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tails: dict[ConversationKey, asyncio.Future[None]] = {}
        self._typing: dict[ConversationKey, _Typing] = {}
        self._senders: dict[ConversationKey, list[tuple[object, str]]] = {}  # pending turns: (token, author)
        self._refusals = RefusalGate()
        self._logged_config_error = ""
        self._inbox: Inbox | None = None
        self._intake_open = True
        self._in_flight: set[str] = set()  # inbox keys submitted in this run
        self._told_restart: set[ConversationKey] = set()
        self.sessions_started = 0
        logs.register_secret(self._config.token)

    # --------------------------------------------------------------------------------------------
    # The Worker interface (called from the supervisor thread).

    def start(self) -> None:
        """Start the loop thread and return at once; again after stop() or a death. RuntimeError if running."""
        if self._loop_thread.running:
            raise RuntimeError(f"the {self.name} worker is already running")
        self._stopping = self._restart_requested = False
        self._deadline = float("inf")
        # Fresh loop-side state for every run (asyncio primitives bind to a loop on first use).
        self._wake = asyncio.Event()
        self._tasks, self._tails, self._typing, self._senders = set(), {}, {}, {}
        self._intake_open = True
        self._in_flight, self._told_restart = set(), set()
        if self._inbox is None:
            self._inbox = open_inbox(self._agent.state_dir, self.name)
        self._set_health("starting", "starting")
        self._loop_thread.start(self._main)

    def apply(self, config: AgentConfig) -> None:
        new = config.platform(self.name)
        logs.register_secret(new.token)
        old = self._config
        self._agent = config
        self._config = new
        if connection_fields(old) != connection_fields(new):
            self.log.info("%s configuration changed: reconnecting", self.name)
            self._restart_requested = True
            self._wake_up()

    def health(self) -> WorkerHealth:
        if self._loop_thread.state is LoopState.DIED:
            return self._live_health(WorkerHealth(
                "error", f"worker thread died ({self._loop_thread.death_detail()})", alive=False,
                extra=self._health.extra))
        return self._live_health(self._health)

    def stop_intake(self) -> None:
        """First step of a stop: new messages are only recorded (answered after the restart); turns
        already running keep going and are delivered until stop()'s deadline."""
        self._intake_open = False

    def stop(self, deadline: float) -> None:
        self._deadline = deadline
        if not self._loop_thread.stop(deadline):
            self.log.warning("%s worker did not stop before the deadline; abandoning it", self.name)
        self._set_health("stopped", "stopped")

    # --------------------------------------------------------------------------------------------
    # The worker loop.

    def _request_stop(self, deadline: float) -> None:
        """LoopThread's stop hook (on the loop): leave the session and the main loop."""
        self._stopping = True
        self._deadline = deadline
        self._wake.set()

    def _wake_up(self) -> None:
        with contextlib.suppress(LoopNotRunning):
            self._loop_thread.call_soon(self._wake.set)

    async def _wait_wake(self, timeout: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _should_leave_session(self) -> bool:
        return self._stopping or self._restart_requested

    async def _main(self) -> None:
        attempt = 0
        while not self._stopping:
            config = self._config
            if not config.enabled:
                self._set_health("stopped", "disabled (no token configured)")
                await self._wait_wake(None)
                continue
            self._restart_requested = False
            self._set_health("starting", "connecting")
            started = time.monotonic()
            self.sessions_started += 1
            try:
                await self._session(config)
            except ConfigurationError as exc:
                delay = self.config_error_backoff
                detail = str(exc)
                if detail != self._logged_config_error:
                    self.log.error("%s: %s (retrying in %.0f s or when the configuration changes)",
                                   self.name, detail, delay)
                    self._logged_config_error = detail
                self._set_health("error", detail, next_retry_s=delay)
            except Exception as exc:
                if time.monotonic() - started > 2 * self.backoff_cap:
                    attempt = 0
                delay = min(self.backoff_cap, self.backoff_base * 2**attempt) * random.uniform(0.8, 1.2)
                attempt += 1
                self.log.warning("%s session failed: %s; restarting in %.1f s", self.name,
                                 _describe(exc), delay, exc_info=self.log.isEnabledFor(logging.DEBUG))
                self._set_health("degraded", f"restarting after failure: {_describe(exc)}", next_retry_s=delay)
            else:
                attempt = 0
                continue  # stop or restart requested
            finally:
                await self._cancel_turns()
            if not self._should_leave_session():
                await self._wait_wake(delay)
        self._set_health("stopped", "stopped")

    def _set_health(self, state: HealthState, detail: str, **extra: Any) -> None:
        """Publish the session's state; health() adds the live counters and the inbox's state to it."""
        self._health = WorkerHealth(state, detail, alive=True, extra=extra)

    def _live_health(self, published: WorkerHealth) -> WorkerHealth:
        state, detail = published.state, published.detail
        extra = {"sessions": self.sessions_started, "refusals_answered": self._refusals.answered,
                 "refusals_silenced": self._refusals.silenced, **published.extra}
        inbox = self._inbox
        if inbox is not None:
            extra["inbox_pending"] = len(inbox.pending())
            if inbox.degraded:
                extra["inbox"] = inbox.degraded
                if state == "ok":
                    state, detail = "degraded", f"{detail}; {inbox.degraded}"
        return WorkerHealth(state, detail, alive=published.alive, extra=extra)

    def _time_left(self, floor: float = 0.05) -> float:
        """Seconds left for a graceful shutdown step (a stop deadline bounds every close)."""
        if self._deadline == float("inf"):
            return 10.0
        return max(floor, self._deadline - time.monotonic() - 0.05)

    async def _monitor(self, probe: Callable[[], tuple[HealthState, str]]) -> None:
        """Publish `probe()` until stop/restart is requested. A probe raises to end a dead session."""
        while not self._should_leave_session():
            state, detail = probe()
            if state == "ok":
                self._logged_config_error = ""
            self._set_health(state, detail)
            await self._wait_wake(self.monitor_interval)
        if self._stopping:
            await self._drain_turns()

    async def _drain_turns(self) -> None:
        """At stop, before the client closes: let pending answers and restart notices go out."""
        typing = {t.task for t in self._typing.values()}
        pending = [t for t in self._tasks if not t.done() and t not in typing]
        if not pending:
            return
        budget = self._time_left() - CLOSE_BUDGET
        self.log.info("%s: waiting up to %.1f s for %d answer(s) before closing", self.name, max(0.0, budget),
                      len(pending))
        if budget > 0:
            await asyncio.wait(pending, timeout=budget)

    @abc.abstractmethod
    async def _session(self, config: PlatformConfig) -> None:
        """Connect a fresh client, `await self._monitor(probe)`, then close the client within the deadline.

        Raise ConfigurationError when the platform rejects the configuration, anything else on failure.
        """

    async def _bounded(self, what: str, step: Awaitable[Any]) -> None:
        """Run one shutdown step, giving up (logged) when the stop deadline would pass."""
        try:
            await asyncio.wait_for(step, self._time_left())
        except TimeoutError:
            self.log.warning("%s: %s did not finish in time", self.name, what)
        except Exception as exc:
            self.log.debug("%s: %s failed: %s", self.name, what, _describe(exc))

    # --------------------------------------------------------------------------------------------
    # Turns and commands (in the worker loop).

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_turns(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.2)
        self._tails.clear()
        self._typing.clear()
        self._senders.clear()
        self._in_flight.clear()  # their answers are lost with the session: the next one replays them

    def handle_message(self, key: ConversationKey, text: str, command: Command | None,
                       responder: Responder, *, message_key: str = "", address: Mapping[str, str] | None = None,
                       sent_at: float | None = None, author_id: str = "") -> None:
        """Called synchronously from the library callback for a message that should be answered.

        `message_key` (the platform's dedup key) and `address` (how to reply later) make it durable;
        `sent_at` (epoch) marks an answer as late when the message waited for us; `author_id` (the sender)
        decides which commands are allowed and whose turn a /stop may end."""
        if command is not None:
            self._spawn(self._run_command(key, command, responder, author_id))
            return
        if not text.strip():
            return
        inbox = self._inbox if message_key else None
        if inbox is not None:
            if not inbox.accept(message_key, str(key), text, address or {}):
                self.log.debug("%s: %s already taken; not answering it again", self.name, message_key)
                return
            if not self._intake_open:
                self.log.info("%s: stopping; %s is kept for after the restart", self.name, key)
                self._spawn(self._tell_restarting(key, responder))
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
            self.log.error("%s: could not submit a turn for %s: %s", self.name, key, _describe(exc))
            future = concurrent.futures.Future()
            future.set_result(Reply(text="Sorry, I could not take this message right now.", error=str(exc)))
        refusal = _refusal(future)
        if refusal is not None:
            self._on_refused(key, refusal, responder)
            self._mark_done(message_key)  # refused honestly: not retried after a restart
            return
        silenced = self._refusals.accepted(key) if key not in self._typing else 0  # drained: episode over
        if silenced:
            self.log.info("%s: %s accepts messages again; %d refused messages were not answered",
                          self.name, key, silenced)
        previous = self._tails.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = done
        self._senders.setdefault(key, []).append((done, author_id))
        self._typing_begin(key, responder)
        self._spawn(self._finish_turn(key, future, responder, previous, done, message_key, note))

    def _on_refused(self, key: ConversationKey, reply: Reply, responder: Responder) -> None:
        """The runner refused a message (queue full): answer the first refusal of the episode only."""
        if self._refusals.refused(key):
            self.log.warning("%s: %s has too many messages waiting; refusing (one reply per %.0f s)",
                             self.name, key, self._refusals.quiet)
            self._spawn(self.send_text(responder, reply.text))
        elif self._refusals.silenced_in(key) == 1:
            self.log.warning("%s: %s is still full; further refused messages are counted, not answered",
                             self.name, key)

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
                self.log.error("%s: turn for %s failed: %s", self.name, key, _describe(exc))
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
            if await self.send_text(responder, text):
                self._mark_done(message_key)
        finally:
            self._typing_end(key)
            self._forget_sender(key, done)
            if not done.done():
                done.set_result(None)
            if self._tails.get(key) is done:
                del self._tails[key]

    def _forget_sender(self, key: ConversationKey, token: object) -> None:
        senders = self._senders.get(key, [])
        senders[:] = [entry for entry in senders if entry[0] is not token]
        if not senders:
            self._senders.pop(key, None)

    def _running_sender(self, key: ConversationKey) -> str | None:
        """The sender of the oldest pending turn of `key` (the one the runner is on); None when idle."""
        senders = self._senders.get(key)
        return senders[0][1] if senders else None

    async def _keep_typing(self, responder: Responder) -> None:
        while True:
            try:
                await responder.typing()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.debug("%s: typing indicator failed: %s", self.name, _describe(exc))
            await asyncio.sleep(self.typing_interval)

    async def send_text(self, responder: Responder, text: str) -> bool:
        """Send `text` (masked: no registered secret leaves in a reply) in chunks; False when a chunk could
        not be sent (logged)."""
        for chunk in split_message(logs.mask(text), self.message_limit):
            try:
                await responder.send(chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error("%s: sending a reply failed: %s", self.name, _describe(exc))
                return False
        return True

    # --------------------------------------------------------------------------------------------
    # The durable inbox (in the worker loop).

    def _mark_done(self, message_key: str) -> None:
        if message_key and self._inbox is not None:
            self._in_flight.discard(message_key)
            self._inbox.done(message_key)

    async def _tell_restarting(self, key: ConversationKey, responder: Responder) -> None:
        """One notice per conversation per stop: its message is kept and answered after the restart."""
        if key in self._told_restart:
            return
        self._told_restart.add(key)
        await self.send_text(responder, failures.RESTARTING_NOTICE)

    def responder_for(self, address: Mapping[str, str]) -> Responder | None:
        """A responder that replies to a message recorded earlier (None: this session cannot)."""
        return None

    async def _replay_pending(self) -> int:
        """Answer what the inbox holds from an earlier run (or a lost session), in acceptance order.

        Called once the session can send; returns how many were resubmitted."""
        inbox = self._inbox
        if inbox is None:
            return 0
        for given_up in inbox.given_up:
            self.log.warning("%s: gave up a message of %s (too many waiting)", self.name, given_up.conversation)
        inbox.given_up.clear()
        count = 0
        for entry in inbox.pending():
            if entry.key in self._in_flight:
                continue
            responder = self.responder_for(entry.address)
            if responder is None:
                continue
            counted = inbox.attempt(entry.key)
            if counted is None:
                continue
            key = ConversationKey.parse(entry.conversation)
            if counted.attempts > inbox.max_attempts:
                self.log.warning("%s: giving up a message of %s after %d attempts", self.name, key,
                                 counted.attempts - 1)
                self._spawn(self._give_up(entry, responder))
                continue
            count += 1
            self._submit(key, entry.text, responder, entry.key, late_note(entry.accepted_at, time.time(), True),
                         entry.address.get("author", ""))
        if count:
            self.log.info("%s: answering %d message(s) left unanswered by the last run", self.name, count)
        return count

    async def _give_up(self, entry: Entry, responder: Responder) -> None:
        if await self.send_text(responder, failures.GIVEN_UP_NOTICE):
            self._mark_done(entry.key)

    async def _run_command(self, key: ConversationKey, command: Command, responder: Responder,
                           author_id: str = "") -> None:
        try:
            answer = await self._command_answer(key, command, author_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("%s: /%s failed: %s", self.name, command.name, _describe(exc))
            answer = f"/{command.name} failed: {_describe(exc)}"
        await self.send_text(responder, answer)

    def _is_admin(self, author_id: str) -> bool:
        return is_admin(author_id, self._config)

    async def _command_answer(self, key: ConversationKey, command: Command, author_id: str = "") -> str:
        admin = self._is_admin(author_id)
        if command.name == "new":
            self._runner.reset(key)
            return "Started a fresh session for this conversation."
        if command.name == "stop":
            running = self._running_sender(key)
            if not admin and running is not None and running != author_id:
                self.log.info("%s: /stop in %s refused: the running turn is someone else's", self.name, key)
                return ADMIN_ONLY_STOP
            stopped = self._runner.interrupt(key)
            return "Stopped the running turn." if stopped else "Nothing is running here."
        if command.name == "status":
            return format_status(self._control.status_summary(), self._runner.queue_depth(key),
                                 self._runner.busy, admin=admin)
        if command.name == "reload":
            if not admin:
                self.log.info("%s: /reload in %s refused: not an admin", self.name, key)
                return ADMIN_ONLY_RELOAD
            changes = await asyncio.wait_for(asyncio.wrap_future(self._control.request_reload()),
                                             RELOAD_TIMEOUT)
            return format_reload(changes)
        raise ValueError(f"unknown command /{command.name}")


def late_note(sent_at: float, now: float, restarted: bool = False) -> str:
    """The line put before a late answer ("" when it is not late)."""
    if not restarted and now - sent_at < LATE_AFTER:
        return ""
    when = time.strftime("%H:%M UTC", time.gmtime(sent_at))
    return f"(Late answer to your message of {when}: I was restarting or offline.)"


def _refusal(future: concurrent.futures.Future[Reply]) -> Reply | None:
    """The runner's reply when it refused the message at once because the conversation is full."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return None
    reply = future.result()
    return reply if reply.error == "queue_full" else None


def _describe(exc: BaseException) -> str:
    """An exception as one masked line (library messages may carry tokens)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return logs.mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
