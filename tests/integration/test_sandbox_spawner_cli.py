"""The real Claude CLI through the tools spawner (the default under systemd), driven by a fake Anthropic API
that scripts a `Bash` call trying to read the env file, the daemon's /proc environ, its own environment, the
daemon's state directory and the spawner's socket: the tool result holds no secret, the CLI runs as the tools
user in the spawner's workspace, the fake got the real key (swapped in by the proxy), the instruction was a
file, and the memory budget sees the CLI's memory as the spawner reports it."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from aiwm_agentd import logs
from aiwm_agentd.workers import ConversationKey
from tests.e2e.test_daemon_realtime_work import TOOL_MARK, ToolAnthropic
from tests.fakes.anthropic import RecordedRequest
from tests.integration.runner_support import RunnerHarness
from tests.integration.test_sandbox_cli import _tool_results
from tests.integration.test_sandbox_launcher import tools_user  # noqa: F401  (fixture)
from tests.integration.test_tools_spawner import Rig, _processes_of, rig  # noqa: F401  (fixtures)

SECRET = "aiwm-agent-secret-spawner-6e6e6e"
API_KEY = "sk-ant-spawner-real-key-3c3c3c"
INSTRUCTION = "SPAWNED-INSTRUCTION-8d8d"


def test_bash_through_the_spawner_gets_no_secret(rig: Rig, tools_user: str, tmp_path: Path,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIWM_AGENT_SECRET", SECRET)
    env_file = tmp_path / "agent.env"
    env_file.write_text(f"AIWM_AGENT_SECRET={SECRET}\nANTHROPIC_API_KEY={API_KEY}\n")
    env_file.chmod(0o640)
    state_dir = tmp_path / "state"
    command = (f"id; pwd; cat {env_file}; tr '\\0' '\\n' < /proc/{os.getpid()}/environ; env; "
               f"ls -la {state_dir}/claude; cat {state_dir}/claude/instruction.md; "
               f"python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('{rig.socket}')\" 2>&1 "
               "| tail -n 1; true")

    def script(request: RecordedRequest) -> str:
        if not _tool_results(request):
            return TOOL_MARK + json.dumps({"name": "Bash", "input": {"command": command, "description": "probe"}})
        return "done"

    os.chown(rig.socket, 0, 0)  # as systemd makes it (root:aiwm-agentd 0660): the tools user may not open it
    os.chmod(rig.socket, 0o600)
    fake = ToolAnthropic().start()
    fake.set_handler(script)
    harness = RunnerHarness(state_dir, fake.url, instruction=INSTRUCTION, api_key=API_KEY, tool_names=("Bash",),
                            tools_socket=rig.socket, tools_user="", tools_dir="")
    try:
        reply = harness.ask("probe the sandbox")
        second = harness.ask("and again", ConversationKey("test", "2"))  # a second client: the budget measures
        health = harness.runner.health().extra
    finally:
        harness.close()
        fake.stop()
    assert reply.error == "" and reply.text == "done", reply
    assert second.text == "done", second
    assert health["sandbox"]["separated"] is True and health["sandbox"]["spawner"] == rig.socket, health
    assert health["warm_rss_mib"] > 40, health  # the CLI's memory, reported by the spawner
    results = "\n".join(t for r in fake.message_requests() for t in _tool_results(r))
    uid = pwd.getpwnam(tools_user).pw_uid
    assert f"uid={uid}({tools_user})" in results and f"{rig.workspace}/work" in results, results
    assert "Permission denied" in results and "PermissionError" in results, results
    for secret in (SECRET, API_KEY, INSTRUCTION):
        assert not [form for form in logs.encoded_forms(secret) if form in results], secret
    assert all(r.headers.get("x-api-key") == API_KEY for r in fake.message_requests())
    assert INSTRUCTION in fake.message_requests()[0].system_text
    assert not _processes_of(uid, "claude"), "a CLI outlived the runner"
    assert not any((rig.workspace / "run").iterdir())
