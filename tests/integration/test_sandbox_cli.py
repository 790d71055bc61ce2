"""The real Claude CLI in the sandbox, driven by a fake Anthropic API that scripts a `Bash` tool call which tries
to read the env file, the daemon's /proc environ, its own environment and the daemon's state directory: the
tool result the fake receives holds no secret, the CLI runs as the tools user, the model request arrived with
the real key (swapped in by the proxy), and the instruction is a file, not on the CLI's argv."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_daemon_realtime_work import TOOL_MARK, ToolAnthropic
from tests.fakes.anthropic import RecordedRequest
from tests.integration.runner_support import RunnerHarness, claude_children
from tests.integration.test_sandbox_launcher import _separated, tools_user  # noqa: F401  (fixture)

SECRET = "aiwm-agent-secret-5e5e5e"
API_KEY = "sk-ant-sandbox-real-key-4d4d4d"
INSTRUCTION = "SANDBOXED-INSTRUCTION-7c7c"


def _tool_results(request: RecordedRequest) -> list[str]:
    texts: list[str] = []
    for message in request.body.get("messages") or []:
        for block in message.get("content") or [] if isinstance(message.get("content"), list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                content = block.get("content")
                texts.append(content if isinstance(content, str) else json.dumps(content))
    return texts


@pytest.fixture
def rig(tools_user: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    _state, tools_dir, _cli = _separated(tools_user)
    env_file = tmp_path / "agent.env"
    env_file.write_text(f"AIWM_AGENT_SECRET={SECRET}\nANTHROPIC_API_KEY={API_KEY}\n")
    env_file.chmod(0o640)
    yield {"tools_dir": tools_dir, "env_file": env_file, "state_dir": tmp_path / "state"}
    import shutil

    shutil.rmtree(tools_dir.parent, ignore_errors=True)


def test_bash_tool_in_the_sandbox_gets_no_secret(rig: dict[str, Any], tools_user: str,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIWM_AGENT_SECRET", SECRET)
    state_dir: Path = rig["state_dir"]
    command = (f"id; cat {rig['env_file']}; tr '\\0' '\\n' < /proc/{os.getpid()}/environ; env; "
               f"ls -la {state_dir} {state_dir}/claude; cat {state_dir}/claude/instruction.md; true")
    cmdlines: list[list[str]] = []

    def script(request: RecordedRequest) -> str:
        cmdlines.extend(p.cmdline() for p in claude_children())
        if not _tool_results(request):
            return TOOL_MARK + json.dumps({"name": "Bash", "input": {"command": command, "description": "probe"}})
        return "done"

    fake = ToolAnthropic().start()
    fake.set_handler(script)
    harness = RunnerHarness(state_dir, fake.url, instruction=INSTRUCTION, api_key=API_KEY, tool_names=("Bash",),
                            tools_user=tools_user, tools_dir=str(rig["tools_dir"]))
    try:
        reply = harness.ask("probe the sandbox")
        health = harness.runner.health().extra["sandbox"]
    finally:
        harness.close()
        fake.stop()
    assert reply.error == "" and reply.text == "done", reply
    assert health["separated"] is True
    requests_seen = fake.message_requests()
    results = "\n".join(t for r in requests_seen for t in _tool_results(r))
    uid = pwd.getpwnam(tools_user).pw_uid
    assert f"uid={uid}({tools_user})" in results
    assert "Permission denied" in results
    assert SECRET not in results and API_KEY not in results and INSTRUCTION not in results
    assert all(r.headers.get("x-api-key") == API_KEY for r in requests_seen)
    assert INSTRUCTION in requests_seen[0].system_text
    assert cmdlines and all("--system-prompt-file" in c for c in cmdlines)
    assert not any(INSTRUCTION in arg for c in cmdlines for arg in c)
