"""The realtime MCP proxy takes only the controller's own MCP servers: a third-party server keeps its URL and
its own headers (the proxy would have sent it the agent JWT instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiwm_agentd.controller.wire import ControllerConfig
from aiwm_agentd.realtime.bridge import McpRewriter
from tests.fakes.anthropic import agent_config

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl"
CONTROLLER = "http://127.0.0.1:8080"


def _controller() -> ControllerConfig:
    return ControllerConfig(wire_version="v5", token=JWT, expires_at=None, instruction="", tools=None,
                            allowed_functions=(), settings={}, mcp_servers={}, deployment_base_url="",
                            channels=(), agent_id="a", agent_name="n", org_id="o")


def test_only_the_controllers_servers_go_through_the_proxy(tmp_path: Path) -> None:
    servers: dict[str, Any] = {
        "Builtin": {"type": "http", "url": f"{CONTROLLER}/mcp", "headers": {"Authorization": f"Bearer {JWT}"}},
        "same-origin": {"type": "http", "url": f"{CONTROLLER}/other/mcp", "headers": {}},
        "third": {"type": "http", "url": "http://localhost:9091/mcp",
                  "headers": {"Authorization": "Bearer third-party-own", "X-Api": "k"}},
        "local": {"type": "stdio", "command": "true"},
    }
    config = agent_config(tmp_path, "http://127.0.0.1:1", mcp_servers=servers, mcp_proxy=True)
    rewriter = McpRewriter(lambda: JWT, True, controller_url=CONTROLLER)
    try:
        out = rewriter.apply(config, _controller()).claude.mcp_servers
        assert rewriter.proxy is not None
        proxy_url = rewriter.proxy.url
    finally:
        rewriter.close()
    assert out["Builtin"]["url"].startswith(proxy_url) and out["same-origin"]["url"].startswith(proxy_url)
    assert JWT not in str(out["Builtin"])
    assert out["third"] == servers["third"]
    assert out["local"] == servers["local"]
