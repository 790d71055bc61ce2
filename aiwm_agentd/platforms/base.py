"""The platform worker: one chat library client kept connected, restarted and stopped on a deadline.

A `PlatformWorker` runs one library client (a discord.py `Client`, a PTB `Application`) on a `LoopThread`:
`start()` returns at once, works again after `stop()` or after the loop died, and `health()` says
`alive=False` when it died so the supervisor restarts it. Its main coroutine: while enabled, run a *session*
(a fresh client, connected, monitored); when the session fails, restart it with exponential backoff, or with
a long backoff when the platform rejected our configuration (`ConfigurationError`: bad token, missing
intent), which is logged once and shown in `health()`.

What happens to the messages is delegated, each to its own module:
  turns.py            one run's turns: arrival order, one answer after the other, typing, the durable inbox
                      and its replay after a restart (issue 10)
  command_answers.py  what /new /stop /status /reload do, with the access rules (issue 9, docs-access.md)
  refusals.py         one refusal reply per overflow episode of a full conversation
  replies.py          masked, split replies and the late-answer note
  health.py           the live /health fields and the restart backoff
At stop, `stop_intake()` comes first (later messages are only recorded); the session's monitor then gives
running turns the rest of the deadline (`_drain_turns`) before the client closes within `CLOSE_BUDGET`.

Who may talk is decided before a message gets here (addressing.should_answer); subclasses pass each
message's sender (`author_id`) and may override `_is_admin`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig, PlatformConfig
from aiwm_agentd.inbox import Inbox, open_inbox
from aiwm_agentd.loopthread import LoopNotRunning, LoopState, LoopThread
from aiwm_agentd.platforms.addressing import is_admin
from aiwm_agentd.platforms.command_answers import RELOAD_TIMEOUT, answer_command
from aiwm_agentd.platforms.commands import Command
from aiwm_agentd.platforms.errors import ConfigurationError, describe
from aiwm_agentd.platforms.health import live_health, restart_delay
from aiwm_agentd.platforms.refusals import REFUSAL_QUIET, RefusalGate
from aiwm_agentd.platforms.replies import LATE_AFTER, Responder, late_note, send_text
from aiwm_agentd.platforms.turns import Turns
from aiwm_agentd.workers import ConversationKey, DaemonControl, HealthState, Runner, WorkerHealth

# The names other modules import from here (their homes are the modules above).
__all__ = ["CLOSE_BUDGET", "LATE_AFTER", "REFUSAL_QUIET", "RELOAD_TIMEOUT", "ConfigurationError", "PlatformWorker",
           "RefusalGate", "Responder", "connection_fields", "late_note"]

# Kept back from the stop deadline to close the library client (after the last answers were sent).
CLOSE_BUDGET = 1.5


def connection_fields(config: PlatformConfig) -> tuple[object, ...]:
    """What a running client depends on: a change here needs a fresh client."""
    return (config.enabled, config.token, config.api_base_url, config.gateway_url)


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
        self._refusals = RefusalGate()
        self._logged_config_error = ""
        self._inbox: Inbox | None = None
        self._turns = self._new_turns()  # replaced at every start(): one per run
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
        if self._inbox is None:
            self._inbox = open_inbox(self._agent.state_dir, self.name)
        self._turns = self._new_turns()
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
        self._turns.intake_open = False

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
                delay = restart_delay(attempt, self.backoff_base, self.backoff_cap)
                attempt += 1
                self.log.warning("%s session failed: %s; restarting in %.1f s", self.name,
                                 describe(exc), delay, exc_info=self.log.isEnabledFor(logging.DEBUG))
                self._set_health("degraded", f"restarting after failure: {describe(exc)}", next_retry_s=delay)
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
        return live_health(published, self.sessions_started, self._refusals, self._inbox)

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
        pending = self._turns.unfinished()
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
            self.log.debug("%s: %s failed: %s", self.name, what, describe(exc))

    # --------------------------------------------------------------------------------------------
    # Turns and commands (in the worker loop): delegated to this run's `Turns`.

    def _new_turns(self) -> Turns:
        return Turns(self.name, self.log, self._runner, self._inbox, self._refusals,
                     typing_interval=self.typing_interval, send=self.send_text, answer=self._command_answer)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        self._turns.spawn(coro)

    async def _cancel_turns(self) -> None:
        await self._turns.cancel()

    def handle_message(self, key: ConversationKey, text: str, command: Command | None,
                       responder: Responder, *, message_key: str = "", address: Mapping[str, str] | None = None,
                       sent_at: float | None = None, author_id: str = "") -> None:
        """Called synchronously from the library callback for a message that should be answered.

        `message_key` (the platform's dedup key) and `address` (how to reply later) make it durable;
        `sent_at` (epoch) marks an answer as late when the message waited for us; `author_id` (the sender)
        decides which commands are allowed and whose turn a /stop may end."""
        self._turns.handle_message(key, text, command, responder, message_key=message_key, address=address,
                                   sent_at=sent_at, author_id=author_id)

    async def send_text(self, responder: Responder, text: str) -> bool:
        """Send `text` (masked: no registered secret leaves in a reply) in chunks; False when a chunk could
        not be sent (logged)."""
        return await send_text(responder, text, self.message_limit, self.log, self.name)

    def responder_for(self, address: Mapping[str, str]) -> Responder | None:
        """A responder that replies to a message recorded earlier (None: this session cannot)."""
        return None

    async def _replay_pending(self) -> int:
        """Answer what the inbox holds from an earlier run (or a lost session), in acceptance order.

        Called once the session can send; returns how many were resubmitted."""
        return await self._turns.replay_pending(self.responder_for)

    def _is_admin(self, author_id: str) -> bool:
        return is_admin(author_id, self._config)

    async def _command_answer(self, key: ConversationKey, command: Command, author_id: str = "") -> str:
        return await answer_command(key, command, author_id=author_id, admin=self._is_admin(author_id),
                                    running_sender=self._turns.running_sender(key), runner=self._runner,
                                    control=self._control, log=self.log, platform=self.name)
