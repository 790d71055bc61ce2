"""WorkerSet with the real ClaudeRunner (stub SDK client): a worker whose loop dies is shown unhealthy,
restarted with backoff, and answers again."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.runner import ClaudeRunner
from aiwm_agentd.workers import ConversationKey, DaemonControl, Worker
from aiwm_agentd.workerset import RunnerWorker, WorkerSet
from tests.fakes.anthropic import agent_config
from tests.harness import wait_for
from tests.unit.test_runner_queue import StubClient, StubWorld

KEY = ConversationKey("telegram", "1")


class Control:
    def status_summary(self) -> dict[str, Any]:
        return {}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        return concurrent.futures.Future()


def config_with_a_platform(tmp_path: Path) -> AgentConfig:
    config = agent_config(tmp_path, "http://127.0.0.1:9")
    return replace(config, telegram=replace(config.telegram, enabled=True, token="123:abc"))


def make_set(tmp_path: Path, world: StubWorld) -> tuple[WorkerSet, list[ClaudeRunner]]:
    made: list[ClaudeRunner] = []

    def factory(config: AgentConfig, control: DaemonControl) -> tuple[RunnerWorker, list[Worker]]:
        runner = ClaudeRunner(config)
        runner.client_factory = type("BoundStub", (StubClient,), {"world": world})
        made.append(runner)
        return runner, []

    return WorkerSet(factory, Control(), Metrics()), made


def health_of(ws: WorkerSet, name: str = "claude") -> Any:
    return dict(ws.health())[name]


def test_no_workers_without_a_platform(tmp_path: Path) -> None:
    ws, made = make_set(tmp_path, StubWorld())
    ws.apply(agent_config(tmp_path, "http://127.0.0.1:9"), 0.0)
    assert made == [] and ws.all == [] and ws.next_check is None


def test_a_dead_runner_is_shown_unhealthy_restarted_with_backoff_and_answers_again(tmp_path: Path) -> None:
    world = StubWorld()
    ws, made = make_set(tmp_path, world)
    ws.apply(config_with_a_platform(tmp_path), time.monotonic())
    runner = made[0]
    try:
        assert runner.submit(KEY, "one").result(10).text == "re: one"
        world.die_on_connect = True
        runner.reset(KEY)  # the next turn connects a new client, which kills the loop
        dead = runner.submit(KEY, "two").result(10)
        assert dead.error  # answered honestly, never left hanging
        wait_for(lambda: not health_of(ws).alive, 5, what="the runner shown dead")
        assert "died" in health_of(ws).detail

        now = time.monotonic()
        ws.check(now)  # restart #1, at once
        wait_for(lambda: health_of(ws).state == "ok" or health_of(ws).state == "error", 5)
        wait_for(lambda: runner.health().state == "ok", 10, what="the restarted runner ready")
        ws.check(time.monotonic())
        assert health_of(ws).state == "ok" and health_of(ws).alive
        assert runner.submit(KEY, "three").result(10).text == "re: three"

        # Dying again at once: the next restart waits for its backoff (about 2 s), shown unhealthy meanwhile.
        world.die_on_connect = True
        runner.reset(KEY)
        runner.submit(KEY, "four").result(10)
        wait_for(lambda: not health_of(ws).alive, 5)
        ws.check(now + 0.5)
        assert not health_of(ws).alive, "restarted before its backoff"
        ws.check(now + 10)
        wait_for(lambda: runner.health().state == "ok", 10)
        assert runner.submit(KEY, "five").result(10).text == "re: five"
    finally:
        ws.stop(time.monotonic() + 5)


def test_a_restarted_worker_counts_as_a_problem_until_it_is_up(tmp_path: Path) -> None:
    class SlowStart:
        """A worker whose restart stays in 'starting' until told otherwise."""

        name = "slow"

        def __init__(self) -> None:
            self.alive, self.state, self.starts = True, "ok", 0

        def start(self) -> None:
            self.alive, self.state, self.starts = True, "starting", self.starts + 1

        def apply(self, config: AgentConfig) -> None:
            pass

        def health(self) -> Any:
            from aiwm_agentd.workers import WorkerHealth

            return WorkerHealth(self.state, "", alive=self.alive)  # type: ignore[arg-type]

        def stop(self, deadline: float) -> None:
            self.alive, self.state = False, "stopped"

    world = StubWorld()
    slow = SlowStart()
    runner_holder: list[ClaudeRunner] = []

    def factory(config: AgentConfig, control: DaemonControl) -> tuple[RunnerWorker, list[Worker]]:
        runner = ClaudeRunner(config)
        runner.client_factory = type("BoundStub", (StubClient,), {"world": world})
        runner_holder.append(runner)
        return runner, [slow]

    ws = WorkerSet(factory, Control(), Metrics())
    ws.apply(config_with_a_platform(tmp_path), 0.0)
    try:
        slow.state = "ok"
        assert health_of(ws, "slow").healthy
        slow.alive = False
        ws.check(100.0)
        assert slow.starts == 2
        shown = health_of(ws, "slow")
        assert shown.state == "error" and "restarting" in shown.detail  # starting again, not yet back
        slow.state = "ok"
        ws.check(102.0)
        assert health_of(ws, "slow").state == "ok"
    finally:
        ws.stop(time.monotonic() + 5)
