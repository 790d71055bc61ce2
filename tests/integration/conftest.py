"""Fixtures shared by the daemon-as-a-subprocess tests: a fault-injecting dev controller and daemons that are
always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.faulty_controller import FaultyController
from tests.harness import Daemon, MakeDaemon


@pytest.fixture
def ctl() -> Iterator[FaultyController]:
    controller = FaultyController(version="v5", bcrypt_rounds=4).start()
    yield controller
    controller.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[MakeDaemon]:
    started: list[Daemon] = []

    def make(env: dict[str, Any], **kwargs: Any) -> Daemon:
        d = Daemon(tmp_path, env, **kwargs)
        started.append(d)
        return d

    yield make
    for d in started:
        d.close()
