"""Start-up visibility and the idle cadence: STATUS= names what is still connecting, and the worker checks are
frequent only while a worker is starting."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from aiwm_agentd import status
from aiwm_agentd.config import AgentConfig
from aiwm_agentd.metrics import Metrics
from aiwm_agentd.workers import DaemonControl, Worker, WorkerHealth
from aiwm_agentd.workerset import CHECK_INTERVAL, SETTLED_CHECK_INTERVAL, RunnerWorker, WorkerSet


def snapshot(**workers: WorkerHealth) -> status.StatusSnapshot:
    return status.StatusSnapshot(
        version="0", started_at=0.0, state="fallback", last_error="local mode", agent_id="", agent_name="bot",
        controller_enabled=False, controller_url="", controller_version="", connected_at=None,
        last_heartbeat_at=None, heartbeat_interval=60.0, heartbeat_failures_in_row=0, heartbeat_enum="",
        token_expires_at=None, token_refreshes=0, config_source="local", config_updates=0, model="m",
        warnings=(), workers=tuple(workers.items()))


def test_status_line_names_the_workers_still_connecting() -> None:
    line = status.status_line(snapshot(claude=WorkerHealth("starting", "importing"),
                                       telegram=WorkerHealth("ok", "polling")))
    assert line == "bot: local configuration (local mode); still connecting: claude"


def test_status_line_without_anything_starting_is_the_controller_line() -> None:
    line = status.status_line(snapshot(claude=WorkerHealth("ok", ""), telegram=WorkerHealth("ok", "polling")))
    assert line == "bot: local configuration (local mode)"


class FakeWorker:
    def __init__(self, name: str, state: str = "starting", alive: bool = True) -> None:
        self.name, self.state, self.alive, self.starts = name, state, alive, 0

    def start(self) -> None:
        self.starts += 1

    def apply(self, config: AgentConfig) -> None:
        pass

    def health(self) -> WorkerHealth:
        return WorkerHealth(self.state, "", alive=self.alive)  # type: ignore[arg-type]

    def stop(self, deadline: float) -> None:
        pass


class Control:
    def status_summary(self) -> dict[str, Any]:
        return {}

    def request_reload(self) -> concurrent.futures.Future[list[str]]:
        return concurrent.futures.Future()


def workerset(runner: FakeWorker, bot: FakeWorker) -> WorkerSet:
    def factory(config: AgentConfig, control: DaemonControl) -> tuple[RunnerWorker, list[Worker]]:
        return runner, [bot]  # type: ignore[return-value]

    ws = WorkerSet(factory, Control(), Metrics())
    ws.runner, ws.platforms = runner, [bot]  # type: ignore[assignment]
    return ws


def test_checks_are_frequent_while_starting_and_rare_once_up() -> None:
    runner, bot = FakeWorker("claude"), FakeWorker("telegram", "ok")
    ws = workerset(runner, bot)
    ws.check(100.0)
    assert ws.next_check == 100.0 + CHECK_INTERVAL
    runner.state = "ok"
    ws.check(101.0)
    assert ws.next_check == 101.0 + SETTLED_CHECK_INTERVAL
    assert SETTLED_CHECK_INTERVAL >= 10 * CHECK_INTERVAL


def test_a_dead_worker_is_checked_again_when_its_restart_is_allowed() -> None:
    runner, bot = FakeWorker("claude", "ok"), FakeWorker("telegram", "error", alive=False)
    ws = workerset(runner, bot)
    ws.check(100.0)
    assert bot.starts == 1  # restarted at once; it is still dead, so the next attempt waits for its backoff
    ws.check(100.5)
    assert ws.next_check is not None and 100.5 < ws.next_check <= 100.5 + SETTLED_CHECK_INTERVAL
    restart_at = ws._restarts["telegram"][1]
    assert ws.next_check == min(restart_at, 100.5 + SETTLED_CHECK_INTERVAL)
