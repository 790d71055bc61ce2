"""WorkerSet.stop: intake closes first, the runner stops with the platforms' budget kept back, then the platforms."""

from __future__ import annotations

import time
from typing import Any

from aiwm_agentd.metrics import Metrics
from aiwm_agentd.workers import WorkerHealth
from aiwm_agentd.workerset import PLATFORM_STOP_BUDGET, WorkerSet


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []


class FakeWorker:
    def __init__(self, name: str, recorder: Recorder, intake: bool) -> None:
        self.name = name
        self._recorder = recorder
        if intake:
            self.stop_intake = lambda: recorder.calls.append((name, "stop_intake", 0.0))

    def start(self) -> None: ...

    def apply(self, config: Any) -> None: ...

    def health(self) -> WorkerHealth:
        return WorkerHealth("ok")

    def stop(self, deadline: float) -> None:
        self._recorder.calls.append((self.name, "stop", deadline))


def test_intake_stops_first_then_the_runner_then_the_platforms() -> None:
    recorder = Recorder()
    workers = WorkerSet(lambda config, control: (None, []), control=None, metrics=Metrics())  # type: ignore[arg-type,return-value]
    workers.runner = FakeWorker("claude", recorder, intake=False)  # type: ignore[assignment]
    workers.platforms = [FakeWorker("discord", recorder, intake=True),  # type: ignore[list-item]
                         FakeWorker("telegram", recorder, intake=True)]
    deadline = time.monotonic() + 10
    workers.stop(deadline)
    steps = [(name, what) for name, what, _ in recorder.calls]
    assert steps[:2] == [("discord", "stop_intake"), ("telegram", "stop_intake")]
    assert steps[2] == ("claude", "stop")
    assert sorted(steps[3:]) == [("discord", "stop"), ("telegram", "stop")]
    deadlines = {name: at for name, what, at in recorder.calls if what == "stop"}
    assert deadlines["claude"] == deadline - PLATFORM_STOP_BUDGET
    assert deadlines["discord"] == deadlines["telegram"] == deadline


def test_a_worker_without_intake_is_only_stopped() -> None:
    recorder = Recorder()
    workers = WorkerSet(lambda config, control: (None, []), control=None, metrics=Metrics())  # type: ignore[arg-type,return-value]
    workers.platforms = [FakeWorker("other", recorder, intake=False)]  # type: ignore[list-item]
    workers.stop(time.monotonic() + 1)
    assert [(n, w) for n, w, _ in recorder.calls] == [("other", "stop")]
