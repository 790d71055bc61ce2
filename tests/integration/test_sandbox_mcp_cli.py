"""The real Claude CLI in the sandbox calls a tool of the controller's MCP server (the dev controller, which
checks the agent JWT) through the API proxy: the call works, and a `Bash` call that reads the CLI's MCP
configuration and environment finds the per-child token, never the JWT in any form."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd import logs
from aiwm_devtools.devcontroller import DevController
from tests.e2e.test_daemon_realtime_work import TOOL_MARK, ToolAnthropic
from tests.fakes.anthropic import RecordedRequest
from tests.integration.runner_support import RunnerHarness
from tests.integration.test_sandbox_cli import _tool_results
from tests.integration.test_sandbox_launcher import _separated, tools_user  # noqa: F401  (fixture)

API_KEY = "sk-ant-sandbox-mcp-key-6b6b6b"


@pytest.fixture
def rig(tools_user: str) -> Iterator[dict[str, Any]]:  # noqa: F811
    _state, tools_dir, _cli = _separated(tools_user)
    ctl = DevController(bcrypt_rounds=4).start()
    try:
        yield {"tools_dir": tools_dir, "ctl": ctl}
    finally:
        ctl.stop()
        shutil.rmtree(tools_dir.parent, ignore_errors=True)


def test_controller_mcp_tool_works_through_the_proxy_and_the_tools_never_see_the_jwt(
        rig: dict[str, Any], tools_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ctl: DevController = rig["ctl"]
    jwt = ctl.issue_token()
    work_id = ctl.work.assign("Write a haiku")
    servers = {"Builtin": {"type": "http", "url": f"{ctl.url}/mcp", "headers": {"Authorization": f"Bearer {jwt}"}}}

    def script(request: RecordedRequest) -> str:
        step = len(_tool_results(request))
        if step == 0:
            return TOOL_MARK + json.dumps({"name": "mcp__Builtin__StartWork", "input": {"workId": work_id}})
        if step == 1:
            return TOOL_MARK + json.dumps({"name": "Bash", "input": {
                "command": "cat \"$HOME\"/../run/mcp*.json; echo; env; true", "description": "probe"}})
        return "done"

    fake = ToolAnthropic().start()
    fake.set_handler(script)
    harness = RunnerHarness(tmp_path / "state", fake.url, api_key=API_KEY, mcp_servers=servers,
                            tool_names=("Bash", "mcp__Builtin__StartWork"), tools_user=tools_user,
                            tools_dir=str(rig["tools_dir"]))
    try:
        reply = harness.ask("start the work")
        proxy = harness.runner._sandbox.api_proxy
        forwarded = proxy.mcp.forwarded if proxy is not None else 0
    finally:
        harness.close()
        fake.stop()
    assert reply.error == "" and reply.text == "done", reply
    results = _tool_results(fake.message_requests()[-1])  # the whole conversation: both tool results
    assert len(results) == 2 and f"work {work_id} is now in_progress" in results[0], results
    assert ctl.work.status(work_id) == "in_progress" and forwarded >= 3  # initialize, tools/list, tools/call
    probe = results[1]
    assert "/mcp/Builtin/mcp" in probe and "aiwm-child-" in probe
    everything = "\n".join(t for r in fake.message_requests() for t in _tool_results(r))
    leaked = [form for form in logs.encoded_forms(jwt) if form in everything]
    assert leaked == []
