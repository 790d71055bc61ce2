"""LoopThread: every lifecycle transition, misuse, and a loop killed from inside."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from aiwm_agentd.loopthread import LoopNotRunning, LoopState, LoopThread

WAIT = 5.0


def state_of(lt: LoopThread) -> LoopState:
    """(A function, so mypy does not narrow lt.state across a transition.)"""
    return lt.state


def wait_for_state(lt: LoopThread, state: LoopState) -> None:
    end = time.monotonic() + WAIT
    while lt.state is not state and time.monotonic() < end:
        time.sleep(0.005)
    assert lt.state is state


class Forever:
    """A main coroutine that runs until cancelled or until its `done` event is set by the stop hook."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.done: asyncio.Event | None = None
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.threads: list[str] = []

    async def main(self) -> None:
        self.done = asyncio.Event()
        self.loops.append(asyncio.get_running_loop())
        self.threads.append(threading.current_thread().name)
        self.started.set()
        try:
            await self.done.wait()
        finally:
            self.finished.set()

    def request_stop(self, deadline: float) -> None:
        assert self.done is not None
        self.done.set()


@pytest.fixture
def lts() -> Iterator[list[LoopThread]]:
    made: list[LoopThread] = []
    yield made
    for lt in made:
        lt.stop(time.monotonic() + 2)


def make(lts: list[LoopThread], forever: Forever | None = None, **kwargs: object) -> LoopThread:
    lt = LoopThread("test-loop", request_stop=forever.request_stop if forever else None, **kwargs)  # type: ignore[arg-type]
    lts.append(lt)
    return lt


def test_new_is_alive_but_not_running_and_refuses_work(lts: list[LoopThread]) -> None:
    lt = make(lts)
    assert lt.state is LoopState.NEW and lt.alive and not lt.running
    with pytest.raises(LoopNotRunning):
        lt.call_soon(print)

    async def nothing() -> int:
        return 1

    coro = nothing()
    with pytest.raises(LoopNotRunning):
        lt.submit(coro)
    assert coro.cr_frame is None  # type: ignore[attr-defined]  # closed, so no "never awaited" warning


def test_start_returns_at_once_and_work_handed_over_before_the_loop_runs_is_kept(lts: list[LoopThread]) -> None:
    forever = Forever()
    lt = make(lts, forever)
    seen: list[str] = []
    began = time.monotonic()
    lt.start(forever.main)
    lt.call_soon(seen.append, "early")  # possibly before the thread even started

    async def answer() -> str:
        return "answered"

    assert lt.submit(answer()).result(WAIT) == "answered"
    assert time.monotonic() - began < 1.0
    assert seen == ["early"] and forever.started.is_set()
    assert lt.state is LoopState.RUNNING and lt.running and lt.alive
    assert forever.threads == ["test-loop"]


def test_start_while_running_raises(lts: list[LoopThread]) -> None:
    forever = Forever()
    lt = make(lts, forever)
    lt.start(forever.main)
    with pytest.raises(RuntimeError, match="while running"):
        lt.start(forever.main)
    assert lt.runs == 1


def test_stop_uses_the_hook_then_start_again_gets_a_fresh_loop(lts: list[LoopThread]) -> None:
    forever = Forever()
    exits: list[str] = []
    lt = make(lts, forever, on_exit=lambda: exits.append(threading.current_thread().name))
    lt.start(forever.main)
    assert forever.started.wait(WAIT)
    assert lt.stop(time.monotonic() + WAIT)
    assert forever.finished.is_set() and lt.state is LoopState.STOPPED and lt.error is None
    assert exits == ["test-loop"] and forever.loops[0].is_closed()
    with pytest.raises(LoopNotRunning):
        lt.call_soon(print)
    forever.started.clear()
    lt.start(forever.main)
    assert forever.started.wait(WAIT)
    assert len(forever.loops) == 2 and forever.loops[1] is not forever.loops[0]
    assert state_of(lt) is LoopState.RUNNING and lt.runs == 2


def test_stop_without_a_hook_cancels_the_main_coroutine(lts: list[LoopThread]) -> None:
    forever = Forever()
    lt = make(lts)
    lt.start(forever.main)
    assert forever.started.wait(WAIT)
    assert lt.stop(time.monotonic() + WAIT)
    assert forever.finished.is_set() and lt.state is LoopState.STOPPED and lt.alive


def test_stop_cancels_what_ignores_the_hook_before_the_deadline(lts: list[LoopThread]) -> None:
    cancelled = threading.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    lt = LoopThread("stubborn", request_stop=lambda deadline: None)
    lts.append(lt)
    lt.start(stubborn)
    began = time.monotonic()
    assert lt.stop(began + 0.5)
    assert cancelled.is_set() and time.monotonic() - began <= 0.6
    assert lt.state is LoopState.STOPPED


def test_a_thread_stuck_in_blocking_code_is_abandoned_at_the_deadline(lts: list[LoopThread]) -> None:
    release = threading.Event()

    async def blocked() -> None:
        release.wait(WAIT)  # blocks the loop: nothing can cancel it

    lt = make(lts)
    lt.start(blocked)
    began = time.monotonic()
    try:
        assert lt.stop(began + 0.3) is False
        assert time.monotonic() - began < 0.5 and lt.state is LoopState.STOPPED
        lt.start(blocked)  # a fresh thread and loop, whatever the old one does
        assert state_of(lt) is LoopState.RUNNING
    finally:
        release.set()


def test_stop_in_every_other_state_is_harmless(lts: list[LoopThread]) -> None:
    lt = make(lts)
    assert lt.stop(time.monotonic() + 1)
    assert lt.state is LoopState.STOPPED
    assert lt.stop(time.monotonic() + 1)
    assert lt.state is LoopState.STOPPED


def test_main_raising_is_death_with_the_error_kept(lts: list[LoopThread]) -> None:
    async def broken() -> None:
        raise ValueError("boom\nsecond line")

    lt = make(lts)
    lt.start(broken)
    wait_for_state(lt, LoopState.DIED)
    assert not lt.alive and not lt.running
    assert isinstance(lt.error, ValueError) and lt.death_detail() == "ValueError: boom"
    with pytest.raises(LoopNotRunning):
        lt.call_soon(print)


def test_main_returning_on_its_own_is_death(lts: list[LoopThread]) -> None:
    async def quits() -> None:
        return None

    lt = make(lts)
    lt.start(quits)
    wait_for_state(lt, LoopState.DIED)
    assert "returned before stop" in lt.death_detail()


def test_a_callback_raising_system_exit_kills_the_loop_then_start_works_again(lts: list[LoopThread]) -> None:
    forever = Forever()
    exits: list[LoopState] = []
    lt: LoopThread = make(lts, forever, on_exit=lambda: exits.append(lt.state))
    lt.start(forever.main)
    assert forever.started.wait(WAIT)

    def die() -> None:
        raise SystemExit("killed from outside")

    lt.call_soon(die)
    wait_for_state(lt, LoopState.DIED)
    assert not lt.alive and isinstance(lt.error, SystemExit)
    assert forever.finished.is_set()  # the main coroutine was cancelled and unwound
    assert forever.loops[0].is_closed() and exits == [LoopState.DIED]
    with pytest.raises(LoopNotRunning):
        lt.call_soon(print)
    assert lt.stop(time.monotonic() + 1)  # what the supervisor does before a restart
    assert lt.state is LoopState.DIED  # stop() does not hide a death
    forever.started.clear()
    lt.start(forever.main)
    assert forever.started.wait(WAIT)
    assert lt.alive and lt.state is LoopState.RUNNING and lt.error is None

    async def ping() -> str:
        return "pong"

    assert lt.submit(ping()).result(WAIT) == "pong"


def test_a_task_raising_base_exception_kills_the_loop(lts: list[LoopThread]) -> None:
    forever = Forever()
    lt = make(lts, forever)
    lt.start(forever.main)

    async def crash() -> None:
        raise KeyboardInterrupt

    lt.call_soon(lambda: asyncio.ensure_future(crash()))
    wait_for_state(lt, LoopState.DIED)
    assert isinstance(lt.error, KeyboardInterrupt) and lt.death_detail() == "KeyboardInterrupt"


def test_submit_during_stop_still_runs(lts: list[LoopThread]) -> None:
    results: list[str] = []

    async def main() -> None:
        await asyncio.sleep(3600)

    lt = LoopThread("graceful")
    lts.append(lt)

    async def slow_main() -> None:
        try:
            await main()
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # still shutting down: work handed over now must run
            raise

    lt.start(slow_main)
    stopper = threading.Thread(target=lt.stop, args=(time.monotonic() + WAIT,))
    stopper.start()
    wait_for_state(lt, LoopState.STOPPING)
    lt.call_soon(results.append, "during stop")
    stopper.join()
    assert results == ["during stop"] and lt.state is LoopState.STOPPED


def test_an_abandoned_run_ending_later_does_not_touch_the_new_run(lts: list[LoopThread]) -> None:
    release, old_ended = threading.Event(), threading.Event()
    exits: list[str] = []

    async def blocked() -> None:
        release.wait(WAIT)
        old_ended.set()
        raise RuntimeError("the old run ends badly, late")

    forever = Forever()
    lt = LoopThread("replaced", request_stop=forever.request_stop, on_exit=lambda: exits.append("exit"))
    lts.append(lt)
    lt.start(blocked)
    assert lt.stop(time.monotonic() + 0.2) is False
    lt.start(forever.main)
    assert forever.started.wait(WAIT)
    release.set()
    assert old_ended.wait(WAIT)
    time.sleep(0.1)  # let the old thread finish its cleanup (nothing to wait on from here)
    assert state_of(lt) is LoopState.RUNNING and lt.error is None and exits == []
    assert lt.stop(time.monotonic() + WAIT) and exits == ["exit"]
