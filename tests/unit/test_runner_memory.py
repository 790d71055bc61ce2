"""The memory budget of warm Claude processes: victim choice, process-tree measurement, the runner's use of it,
and the SDK import that waits for the bots unless a message needs it."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from aiwm_agentd.config.table import auto_memory_budget_mib
from aiwm_agentd.runner import ClaudeRunner
from aiwm_agentd.runner.memory import MIB, WarmClient, _tree_rss_psutil, choose_victims, tree_rss
from aiwm_agentd.workers import ConversationKey
from tests.fakes.anthropic import agent_config
from tests.unit.test_runner_queue import StubClient, StubWorld

GIB = 1024 * MIB

# -- choose_victims ------------------------------------------------------------------------------


def warm(key: str, last_used: float, mib: int, closable: bool = True) -> WarmClient:
    return WarmClient(key, last_used, mib * MIB, closable)


def test_nothing_is_closed_within_the_budget() -> None:
    assert choose_victims([warm("a", 1, 200), warm("b", 2, 200)], 0, 400 * MIB) == []


def test_least_recently_used_idle_clients_close_first_until_it_fits() -> None:
    clients = [warm("new", 9, 200), warm("old", 1, 200), warm("mid", 5, 200)]
    assert choose_victims(clients, 0, 450 * MIB) == ["old"]
    assert choose_victims(clients, 0, 250 * MIB) == ["old", "mid"]


def test_the_incoming_client_counts() -> None:
    assert choose_victims([warm("a", 1, 200)], 200 * MIB, 300 * MIB) == ["a"]
    assert choose_victims([warm("a", 1, 200)], 0, 300 * MIB) == []


def test_busy_clients_are_never_victims_even_over_budget() -> None:
    clients = [warm("running", 1, 300, closable=False), warm("idle", 2, 200)]
    assert choose_victims(clients, 200 * MIB, 100 * MIB) == ["idle"]


def test_auto_budget_is_a_sixty_fourth_of_memory_with_a_floor() -> None:
    assert auto_memory_budget_mib(24 * GIB) == 384
    assert auto_memory_budget_mib(64 * GIB) == 1024
    assert auto_memory_budget_mib(2 * GIB) == 256


# -- tree_rss ------------------------------------------------------------------------------------


def test_tree_rss_counts_every_descendant() -> None:
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);" \
             " time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while not parent.children() and time.monotonic() < deadline:
            time.sleep(0.02)
        [child] = parent.children()
        own = parent.memory_info().rss
        measured = tree_rss(proc.pid)
        assert measured >= own + child.memory_info().rss * 0.9
        assert abs(measured - _tree_rss_psutil(proc.pid)) < 4 * MIB
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()


def test_tree_rss_of_a_gone_process_is_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_rss(proc.pid) == 0


# -- the runner ----------------------------------------------------------------------------------

# Never real pids (above the kernel's pid_max): the runner's kill paths find nothing to kill.
_FAKE_PIDS = itertools.count(10_000_000)


class _Process:
    def __init__(self) -> None:
        self.pid = next(_FAKE_PIDS)


class _Transport:
    def __init__(self) -> None:
        self._process = _Process()


class MeasuredStub(StubClient):
    """A stub client with a (fake) CLI pid, so the runner measures it."""

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self._transport = _Transport()


@pytest.fixture
def world() -> StubWorld:
    return StubWorld()


@pytest.fixture
def make_runner(world: StubWorld, tmp_path: Path) -> Iterator[Any]:
    runners: list[ClaudeRunner] = []

    def make(client_mib: int = 200, import_delay: float = 0.0, **claude: Any) -> ClaudeRunner:
        runner = ClaudeRunner(agent_config(tmp_path, "http://127.0.0.1:9", **claude))
        runner.client_factory = type("BoundStub", (MeasuredStub,), {"world": world})
        runner.measure_rss = lambda pid: client_mib * MIB  # type: ignore[method-assign]
        runner.import_delay = import_delay
        runner.start()
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop(time.monotonic() + 5)
    assert world.live == 0, "a stub client was never disconnected"


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_new_conversation_closes_the_idle_one_that_no_longer_fits(make_runner: Any, world: StubWorld) -> None:
    runner = make_runner(memory_budget_mib=300)
    a, b = ConversationKey("t", "a"), ConversationKey("t", "b")
    assert runner.submit(a, "a1").result(5).error == ""
    assert runner.submit(a, "a2").result(5).error == ""
    assert len(world.connects) == 1  # the follow-up used the warm client
    assert runner.submit(b, "b1").result(5).error == ""
    assert world.max_live == 1  # a was closed before b's client started
    assert runner.health().extra["budget_closes"] == 1
    assert runner.submit(b, "b2").result(5).error == ""
    assert len(world.connects) == 2  # b kept its warm client


def test_two_clients_stay_warm_when_the_budget_holds_them(make_runner: Any, world: StubWorld) -> None:
    runner = make_runner(memory_budget_mib=450)
    for n in range(2):
        for chat in "ab":
            assert runner.submit(ConversationKey("t", chat), f"{chat}{n}").result(5).error == ""
    assert len(world.connects) == 2 and world.live == 2
    assert runner.health().extra["warm_rss_mib"] == 400.0


def test_a_conversation_in_a_turn_keeps_its_client_and_the_idle_one_goes_after(make_runner: Any,
                                                                               world: StubWorld) -> None:
    world.delay, world.slow_prefix = 1.0, "slow"
    runner = make_runner(memory_budget_mib=300)
    a, b = ConversationKey("t", "a"), ConversationKey("t", "b")
    slow = runner.submit(a, "slow")
    wait_until(lambda: world.turns == 1)
    assert runner.submit(b, "quick").result(5).error == ""
    assert not slow.done() and world.live == 2  # over budget, but a is in its turn
    assert slow.result(5).error == ""
    wait_until(lambda: world.live == 1)  # then b, idle and least recently used, was closed
    assert runner.submit(a, "again").result(5).error == ""
    assert len(world.connects) == 2  # a kept its warm client throughout


def test_the_sdk_import_waits_for_the_bots_unless_a_message_comes(make_runner: Any) -> None:
    runner = make_runner(import_delay=30.0)
    # start() returns at once; the loop then says it is waiting to import (it would wait 30 s).
    wait_until(lambda: "importing" in runner.health().detail)
    assert runner.health().state == "starting"
    started = time.monotonic()
    assert runner.submit(ConversationKey("t", "a"), "hi").result(10).error == ""
    assert time.monotonic() - started < 10
    assert runner.health().state == "ok"


def test_the_sdk_import_happens_after_the_delay(make_runner: Any) -> None:
    runner = make_runner(import_delay=0.2)
    wait_until(lambda: runner.health().state == "ok")


def test_fake_pids_are_not_real() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert next(_FAKE_PIDS) > pid_max
    assert not os.path.exists(f"/proc/{10_000_000}")
