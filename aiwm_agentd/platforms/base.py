"""The plumbing shared by the chat platforms: a thread with its own event loop, restarts, health, turns.

A `PlatformWorker` runs one library client (a discord.py `Client`, a PTB `Application`) in its own thread.
Its loop: while enabled, run a *session* (a fresh client, connected, monitored); when the session fails,
restart it with exponential backoff, or with a long backoff when the platform rejected our configuration
(`ConfigurationError`: bad token, missing intent), which is logged once and shown in `health()`.

Turns: an addressed message is submitted to the runner *synchronously* in the library's callback, so the
runner's per-conversation FIFO sees messages in arrival order; the answer is awaited in a task, and each
conversation's answers are sent strictly one after the other, as replies to the triggering message, with
the typing indicator refreshed until the answer is sent.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig, PlatformConfig
from aiwm_agentd.platforms.commands import Command, format_reload, format_status
from aiwm_agentd.platforms.split import split_message
from aiwm_agentd.workers import ConversationKey, DaemonControl, HealthState, Reply, Runner, WorkerHealth

RELOAD_TIMEOUT = 60.0


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


class PlatformWorker(abc.ABC):
    """A `workers.Worker` for one chat platform. Subclasses implement `_session` and the message glue."""

    name: str = ""
    message_limit: int = 2000
    typing_interval: float = 5.0
    # Restart backoff: base * 2**attempt up to the cap, with jitter; long after a configuration error.
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    config_error_backoff: float = 600.0
    monitor_interval: float = 0.5

    def __init__(self, config: AgentConfig, runner: Runner, control: DaemonControl) -> None:
        self.log = logging.getLogger(f"aiwm_agentd.platforms.{self.name}")
        self._agent = config
        self._config = config.platform(self.name)
        self._runner = runner
        self._control = control
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._restart_requested = False
        self._deadline = float("inf")
        self._health = WorkerHealth("stopped", "not started")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tails: dict[ConversationKey, asyncio.Future[None]] = {}
        self._logged_config_error = ""
        self.sessions_started = 0
        logs.register_secret(self._config.token)

    # --------------------------------------------------------------------------------------------
    # The Worker interface (called from the supervisor thread).

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._deadline = float("inf")
        self._set_health("starting", "starting")
        self._thread = threading.Thread(target=self._thread_main, name=f"platform-{self.name}", daemon=True)
        self._thread.start()

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
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stopping:
            return WorkerHealth("error", "worker thread died", alive=False)
        return self._health

    def stop(self, deadline: float) -> None:
        self._stopping = True
        self._deadline = deadline
        self._wake_up()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.log.warning("%s worker did not stop before the deadline; abandoning it", self.name)
                return
        self._set_health("stopped", "stopped")

    # --------------------------------------------------------------------------------------------
    # The worker thread.

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:
            self.log.exception("%s worker crashed", self.name)
            raise
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.wait(pending, timeout=0.2))
            self._loop = None
            loop.close()

    def _wake_up(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    async def _wait_wake(self, timeout: float | None) -> None:
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    def _should_leave_session(self) -> bool:
        return self._stopping or self._restart_requested

    async def _main(self) -> None:
        self._wake = asyncio.Event()
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
        extra.setdefault("sessions", self.sessions_started)
        self._health = WorkerHealth(state, detail, alive=True, extra=extra)

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
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

    def handle_message(self, key: ConversationKey, text: str, command: Command | None,
                       responder: Responder) -> None:
        """Called synchronously from the library callback for a message that should be answered."""
        if command is not None:
            self._spawn(self._run_command(key, command, responder))
            return
        if not text.strip():
            return
        try:
            future = self._runner.submit(key, text)
        except Exception as exc:
            self.log.error("%s: could not submit a turn for %s: %s", self.name, key, _describe(exc))
            future = concurrent.futures.Future()
            future.set_result(Reply(text="Sorry, I could not take this message right now.", error=str(exc)))
        previous = self._tails.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = done
        self._spawn(self._finish_turn(key, future, responder, previous, done))

    async def _finish_turn(self, key: ConversationKey, future: concurrent.futures.Future[Reply],
                           responder: Responder, previous: asyncio.Future[None] | None,
                           done: asyncio.Future[None]) -> None:
        typing = asyncio.get_running_loop().create_task(self._keep_typing(responder))
        try:
            try:
                reply = await asyncio.wrap_future(future)
                text = reply.text
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error("%s: turn for %s failed: %s", self.name, key, _describe(exc))
                text = "Sorry, something went wrong while answering."
            if previous is not None:
                await asyncio.shield(previous)
            await self.send_text(responder, text)
        finally:
            typing.cancel()
            if not done.done():
                done.set_result(None)
            if self._tails.get(key) is done:
                del self._tails[key]

    async def _keep_typing(self, responder: Responder) -> None:
        while True:
            try:
                await responder.typing()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.debug("%s: typing indicator failed: %s", self.name, _describe(exc))
            await asyncio.sleep(self.typing_interval)

    async def send_text(self, responder: Responder, text: str) -> None:
        for chunk in split_message(text, self.message_limit):
            try:
                await responder.send(chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.error("%s: sending a reply failed: %s", self.name, _describe(exc))
                return

    async def _run_command(self, key: ConversationKey, command: Command, responder: Responder) -> None:
        try:
            answer = await self._command_answer(key, command)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("%s: /%s failed: %s", self.name, command.name, _describe(exc))
            answer = f"/{command.name} failed: {_describe(exc)}"
        await self.send_text(responder, answer)

    async def _command_answer(self, key: ConversationKey, command: Command) -> str:
        if command.name == "new":
            self._runner.reset(key)
            return "Started a fresh session for this conversation."
        if command.name == "stop":
            stopped = self._runner.interrupt(key)
            return "Stopped the running turn." if stopped else "Nothing is running here."
        if command.name == "status":
            return format_status(self._control.status_summary(), self._runner.queue_depth(key),
                                 self._runner.busy)
        if command.name == "reload":
            changes = await asyncio.wait_for(asyncio.wrap_future(self._control.request_reload()),
                                             RELOAD_TIMEOUT)
            return format_reload(changes)
        raise ValueError(f"unknown command /{command.name}")


def _describe(exc: BaseException) -> str:
    """An exception as one masked line (library messages may carry tokens)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return logs.mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
