"""A thread that owns one asyncio loop, with an explicit, guarded lifecycle.

Every worker (the Claude runner, the Discord and Telegram bots) runs its library in a thread of its own with
its own event loop. This is the one place that plumbing lives, so the lifecycle is the same for all of them
and the supervisor can rely on it (python-telegram-bot's `Application` is the model):

    new --start()--> running --stop()--> stopping --> stopped --start()--> running ...
                        |
                        +-- the main coroutine raised, returned on its own, or the loop was killed
                            (a callback raising SystemExit) --> died --start()--> running ...

- `start(main)` creates a fresh loop and thread and returns at once. The loop and its main task exist before
  `start()` returns, so `call_soon()` / `submit()` work immediately: what they hand over runs as soon as the
  thread is up, after the main coroutine's first step, and nothing is lost.
- `start()` while running (or stopping) raises RuntimeError: a loud misuse, never a second loop.
- `stop(deadline)` asks the main coroutine to end (the `request_stop` hook, or cancelling it), waits for the
  thread until shortly before `deadline` (time.monotonic()), then cancels whatever is left. The thread closes
  its own loop; a thread stuck in blocking code is abandoned (it is a daemon thread) and logged.
- `call_soon()` / `submit()` raise `LoopNotRunning` when there is no loop to run their work, so a caller can
  answer honestly instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Any, TypeVar

from aiwm_agentd import logs

log = logging.getLogger("aiwm_agentd.loopthread")

T = TypeVar("T")

# After the main coroutine ended, time given to the tasks it left behind to finish their cancellation.
CLEANUP_TIMEOUT = 2.0
# Part of the stop budget kept back to cancel what did not end by itself.
CANCEL_RESERVE = 0.25


class LoopState(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DIED = "died"


class LoopNotRunning(RuntimeError):
    """There is no running loop to take this work (never started, stopped, or died)."""


class _Run:
    """One start(): its loop, its thread and its main task. A restart makes a new one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[None]) -> None:
        self.loop = loop
        self.main = main
        self.thread: threading.Thread | None = None
        self.stop_requested = False
        self.cleanup_deadline = float("inf")


class LoopThread:
    """One worker thread running one asyncio loop; see the module docstring for the lifecycle."""

    def __init__(self, name: str, *, request_stop: Callable[[float], None] | None = None,
                 on_exit: Callable[[], None] | None = None) -> None:
        """`request_stop(deadline)` runs on the loop when stop() is called (default: cancel the main task).
        `on_exit()` runs on the worker thread once the loop is closed, however the run ended; not for a run
        that stop() abandoned and a later start() replaced (it would act on the new run's state)."""
        self.name = name
        self._request_stop = request_stop
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._state = LoopState.NEW
        self._run: _Run | None = None
        self._error: BaseException | None = None
        self.runs = 0

    # ------------------------------------------------------------------------------------- state

    @property
    def state(self) -> LoopState:
        with self._lock:
            return self._state

    @property
    def alive(self) -> bool:
        """False only when the loop died: what the supervisor restarts."""
        return self.state is not LoopState.DIED

    @property
    def running(self) -> bool:
        """True while the loop accepts work (running or stopping)."""
        return self.state in (LoopState.RUNNING, LoopState.STOPPING)

    @property
    def error(self) -> BaseException | None:
        """What killed the last run (None when it ended normally or is still running)."""
        with self._lock:
            return self._error

    def death_detail(self) -> str:
        """One line for health(): why the loop died (exception type and first line only)."""
        error = self.error
        if error is None:
            return "its loop ended unexpectedly"
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return logs.mask(f"{type(error).__name__}: {text}" if text else type(error).__name__)

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `main()` on a fresh loop in a fresh thread; return at once. RuntimeError if already running."""
        with self._lock:
            if self._state in (LoopState.RUNNING, LoopState.STOPPING):
                raise RuntimeError(f"{self.name}: start() while {self._state.value}")
            loop = asyncio.new_event_loop()
            # Created before anyone can call_soon(): the main coroutine's first step runs before their work.
            task = loop.create_task(main(), name=f"{self.name}-main")
            run = _Run(loop, task)
            run.thread = threading.Thread(target=self._thread_main, args=(run,), name=self.name, daemon=True)
            self._run, self._state, self._error = run, LoopState.RUNNING, None
            self.runs += 1
            run.thread.start()

    def stop(self, deadline: float) -> bool:
        """Ask the main coroutine to end, wait until `deadline`; True when the thread ended in time.

        Safe in every state: stopping a new, stopped or dead LoopThread only settles its state."""
        with self._lock:
            run = self._run
            if self._state is LoopState.RUNNING and run is not None:
                self._state = LoopState.STOPPING
                run.stop_requested = True
                run.cleanup_deadline = deadline
            elif self._state is LoopState.STOPPING and run is not None:
                run.cleanup_deadline = min(run.cleanup_deadline, deadline)
            else:
                if self._state is LoopState.NEW:
                    self._state = LoopState.STOPPED
                run = None
        if run is None:
            return True
        assert run.thread is not None
        self._threadsafe(run, self._ask_to_end, run, deadline)
        reserve = min(CANCEL_RESERVE, max(0.0, deadline - time.monotonic()) / 4)
        run.thread.join(max(0.0, deadline - reserve - time.monotonic()))
        if run.thread.is_alive():
            self._threadsafe(run, _cancel_all)
            run.thread.join(max(0.0, deadline - time.monotonic()))
        ended = not run.thread.is_alive()
        if not ended:
            log.warning("%s did not stop before its deadline; abandoning its thread", self.name)
        with self._lock:
            if self._run is run and self._state is LoopState.STOPPING:
                self._state = LoopState.STOPPED
        return ended

    # ------------------------------------------------------------------------------------- handing work over

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` on the loop (from any thread). LoopNotRunning when no loop will run it."""
        with self._lock:
            run = self._run if self._state in (LoopState.RUNNING, LoopState.STOPPING) else None
        if run is None or not self._threadsafe(run, fn, *args):
            raise LoopNotRunning(f"{self.name} is not running")

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the loop (from any thread); its result arrives in the returned future.

        LoopNotRunning (and `coro` closed) when no loop will run it."""
        with self._lock:
            run = self._run if self._state in (LoopState.RUNNING, LoopState.STOPPING) else None
        if run is None:
            coro.close()
            raise LoopNotRunning(f"{self.name} is not running")
        try:
            return asyncio.run_coroutine_threadsafe(coro, run.loop)
        except RuntimeError:  # the loop closed in between
            coro.close()
            raise LoopNotRunning(f"{self.name} is not running") from None

    # ------------------------------------------------------------------------------------- the thread

    @staticmethod
    def _threadsafe(run: _Run, fn: Callable[..., object], *args: Any) -> bool:
        try:
            run.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed
            return False
        return True

    def _ask_to_end(self, run: _Run, deadline: float) -> None:
        with self._lock:
            stale = self._run is not run  # abandoned and replaced: the hook would stop the new run
        if self._request_stop is None or stale:
            run.main.cancel()
            return
        try:
            self._request_stop(deadline)
        except Exception:
            log.exception("%s: its stop hook failed; cancelling it", self.name)
            run.main.cancel()

    def _thread_main(self, run: _Run) -> None:
        loop = run.loop
        asyncio.set_event_loop(loop)
        error: BaseException | None = None
        try:
            loop.run_until_complete(run.main)
            if not run.stop_requested:
                error = RuntimeError("its main coroutine returned before stop() was called")
        except asyncio.CancelledError:
            if not run.stop_requested:
                error = RuntimeError("its main coroutine was cancelled")
        except BaseException as exc:
            error = exc
        if error is not None:
            log.error("%s died: %s", self.name, logs.mask(f"{type(error).__name__}: {error}"),
                      exc_info=(type(error), error, error.__traceback__))
        try:
            self._cleanup(run, error)
        finally:
            with self._lock:
                current = self._run is run
                if current:
                    self._error = error
                    if self._state is LoopState.RUNNING:
                        self._state = LoopState.DIED if error is not None else LoopState.STOPPED
            if self._on_exit is not None and current:
                try:
                    self._on_exit()
                except Exception:
                    log.exception("%s: its exit hook failed", self.name)

    def _cleanup(self, run: _Run, error: BaseException | None) -> None:
        """Cancel what the main coroutine left behind, let it unwind for a bounded time, close the loop."""
        loop = run.loop
        if error is not None:
            _silence_the_killer(loop, error)
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                budget = min(CLEANUP_TIMEOUT, max(0.05, run.cleanup_deadline - time.monotonic()))
                loop.run_until_complete(asyncio.wait(pending, timeout=budget))
            for task in pending:  # retrieved, so asyncio does not log them again
                if task.done() and not task.cancelled():
                    task.exception()
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException as exc:
            log.warning("%s: cleaning up its loop: %s: %s", self.name, type(exc).__name__, exc)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _silence_the_killer(loop: asyncio.AbstractEventLoop, error: BaseException) -> None:
    """The task that killed the loop is reported "exception never retrieved" when collected: we logged it
    already (as the death), so only that report is dropped."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("exception") is not error:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _cancel_all() -> None:
    for task in asyncio.all_tasks():
        task.cancel()
