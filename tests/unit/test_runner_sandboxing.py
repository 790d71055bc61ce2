"""RunnerSandbox, the runner's one door to the tool sandbox: what it gives before and after start when the
sandbox is off (detected once per runner, launcher written every start), and its process-tree kill."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aiwm_agentd.runner import sandboxing
from aiwm_agentd.runner.options import RunnerPaths
from aiwm_agentd.runner.sandboxing import RunnerSandbox
from tests.fakes.anthropic import agent_config


def test_before_start_there_is_no_child_sandbox_and_no_health_field() -> None:
    sandbox = RunnerSandbox()
    assert sandbox.child("conv") is None
    assert sandbox.health() is None
    sandbox.revoke("no-such-token")  # nothing to revoke: no error
    sandbox.stop(0.0)


def test_off_sandbox_detects_once_writes_the_launcher_each_start_and_gives_children_no_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    detections: list[str] = []
    real_detect = sandboxing.detect

    def counting_detect(user: str, tools_dir: Path, socket_path: str = "") -> sandboxing.SandboxState:
        detections.append(user)
        return real_detect(user, tools_dir, socket_path=socket_path)

    monkeypatch.setattr(sandboxing, "detect", counting_detect)
    config = agent_config(tmp_path, "http://127.0.0.1:9", tools_user="")
    paths = RunnerPaths.for_state_dir(tmp_path)
    sandbox = RunnerSandbox()
    sandbox.start(config, paths)
    assert paths.launcher.is_file()
    assert sandbox.health() == {"separated": False, "detail": "off: CLAUDE_TOOLS_USER is empty"}
    child = sandbox.child("conv")
    assert child is not None and not child.state.separated
    assert (child.token, child.proxy_url) == ("", "")
    sandbox.set_upstream(config)  # no API proxy when off: nothing to change
    sandbox.stop(0.0)
    paths.launcher.unlink()
    sandbox.start(config, paths)
    assert paths.launcher.is_file()
    assert detections == [""]


def test_kill_tree_before_start_kills_the_leader_only_when_asked() -> None:
    sandbox = RunnerSandbox()
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        sandbox.kill_tree(process.pid, leader_too=False)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
        sandbox.kill_tree(process.pid)
        assert process.wait(timeout=5) == -9
    finally:
        process.kill()
        process.wait()


def test_kill_tree_after_start_kills_the_childs_process_group(tmp_path: Path) -> None:
    sandbox = RunnerSandbox()
    sandbox.start(agent_config(tmp_path, "http://127.0.0.1:9", tools_user=""), RunnerPaths.for_state_dir(tmp_path))
    process = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    try:
        sandbox.kill_tree(process.pid, leader_too=False)  # the group: the leader too, as it leads it
        assert process.wait(timeout=5) == -9
    finally:
        process.kill()
        process.wait()


def test_spawner_memory_is_asked_again_for_a_cli_started_since(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a one-second cache made every CLI started within that second count 0 bytes, and the memory
    budget let three 200 MiB CLIs stay warm under a 256 MiB budget."""
    answers = [{11: 200}, {11: 200, 22: 300}]
    asked: list[str] = []

    def query(path: str) -> dict[int, int]:
        asked.append(path)
        return answers[min(len(asked), len(answers)) - 1]

    monkeypatch.setattr(sandboxing, "query_rss", query)
    sandbox = RunnerSandbox()
    sandbox._state = sandboxing.SandboxState(True, "on", spawner_socket="/run/x.sock")
    assert sandbox.extra_rss(11) == 200
    assert sandbox.extra_rss(11) == 200 and len(asked) == 1  # reused within the second
    assert sandbox.extra_rss(22) == 300 and len(asked) == 2  # not in the answer: asked again
    off = RunnerSandbox()
    off._state = sandboxing.SandboxState(False, "off")
    assert off.extra_rss(11) == 0 and len(asked) == 2
