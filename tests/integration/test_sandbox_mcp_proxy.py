"""The controller's MCP server through the API proxy for real (127.0.0.1): the child's token in, the agent JWT
out; wrong or revoked tokens reach nothing; a refreshed JWT is used at once; SSE streams through unbuffered;
the child's side (its mcp.json source and its environment) never holds the JWT in any form."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from aiwm_agentd import logs
from aiwm_agentd.runner.options import (
    ChildSandbox,
    OptionInputs,
    RunnerPaths,
    build_options,
    child_mcp_source,
    forget_child,
    write_child_mcp_config,
)
from aiwm_agentd.sandbox.api_proxy import ApiProxy, Upstream
from aiwm_agentd.sandbox.identity import SandboxState, ToolsIdentity
from tests.fakes.anthropic import agent_config
from tests.fakes.mcp_server import FakeMcpServer

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC0xIn0.c2lnbmF0dXJlLW9uZQ"
JWT2 = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC0yIn0.c2lnbmF0dXJlLXR3bw"
STATE = SandboxState(True, "on", ToolsIdentity("tools", 4321, 4321), Path("/tools"), "/usr/bin/setpriv")
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "StartWork", "arguments": {}}}
TIMEOUT = (5, 5)


def _servers(base: str, jwt: str) -> dict[str, Any]:
    return {
        "Builtin": {"type": "http", "url": f"{base}/mcp", "headers": {"Authorization": f"Bearer {jwt}",
                                                                     "X-Agent-Id": "agent-1"}},
        "Legacy": {"type": "sse", "url": f"{base}/sse", "headers": {"Authorization": f"Bearer {jwt}"}},
        "Third": {"type": "http", "url": "https://third.example/mcp", "headers": {"Authorization": "Bearer own"}},
    }


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[dict[str, Any]]:
    server = FakeMcpServer().start()
    proxy = ApiProxy(Upstream("http://127.0.0.1:9", "sk-daemon", "", _servers(server.url, JWT)))
    proxy.start()
    token = proxy.issue("conv")
    paths = RunnerPaths.for_state_dir(tmp_path / "aiwm-agentd")
    source = write_child_mcp_config(paths, ChildSandbox(STATE, token=token, proxy_url=proxy.url),
                                    proxy.upstream().mcp_servers)
    child_view = json.loads(source.read_text())["mcpServers"]
    try:
        yield {"server": server, "proxy": proxy, "token": token, "servers": child_view, "paths": paths}
    finally:
        proxy.stop()
        server.stop()


def _post(url: str, token: str, message: dict[str, Any], **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "accept": "application/json, text/event-stream",
               "content-type": "application/json", "mcp-protocol-version": "2025-06-18", **kwargs.pop("headers", {})}
    return requests.post(url, data=json.dumps(message), headers=headers, timeout=TIMEOUT, **kwargs)


def test_live_token_reaches_the_server_with_the_jwt_and_mcp_headers_pass_both_ways(rig: dict[str, Any]) -> None:
    server, url, token = rig["server"], rig["servers"]["Builtin"]["url"], rig["token"]
    assert url.startswith(rig["proxy"].url + "/mcp/Builtin/mcp")
    answer = _post(url, token, INIT)
    assert answer.status_code == 200 and answer.json()["result"]["serverInfo"]["name"] == "fake"
    assert answer.headers["mcp-session-id"] == "sess-1"
    gone = requests.delete(url, headers={"Authorization": f"Bearer {token}", "mcp-session-id": "sess-1"},
                           timeout=TIMEOUT)
    assert gone.status_code == 200
    first, second = server.requests
    assert (first.method, first.path, first.authorization) == ("POST", "/mcp", f"Bearer {JWT}")
    assert first.headers["x-agent-id"] == "agent-1" and first.headers["mcp-protocol-version"] == "2025-06-18"
    assert "json" in first.headers["accept"] and json.loads(first.body) == INIT
    assert (second.method, second.headers["mcp-session-id"], second.authorization) == ("DELETE", "sess-1",
                                                                                       f"Bearer {JWT}")
    assert token not in json.dumps([r.headers for r in server.requests])


def test_wrong_or_revoked_token_gets_401_and_nothing_is_forwarded(rig: dict[str, Any]) -> None:
    proxy, url, token = rig["proxy"], rig["servers"]["Builtin"]["url"], rig["token"]
    assert _post(url, "aiwm-child-forged", INIT).status_code == 401
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    proxy.revoke(token)
    assert _post(url, token, INIT).status_code == 401
    assert rig["server"].requests == [] and proxy.refused == 3


def test_a_refreshed_jwt_is_used_by_the_next_request(rig: dict[str, Any]) -> None:
    proxy, server, url, token = rig["proxy"], rig["server"], rig["servers"]["Builtin"]["url"], rig["token"]
    assert _post(url, token, INIT).status_code == 200
    old = proxy.upstream()
    proxy.set_upstream(Upstream(old.base_url, old.api_key, old.oauth_token, _servers(server.url, JWT2)))
    assert _post(url, token, INIT).status_code == 200
    assert [r.authorization for r in server.requests] == [f"Bearer {JWT}", f"Bearer {JWT2}"]


def test_an_sse_answer_streams_through_unbuffered(rig: dict[str, Any]) -> None:
    server, url, token = rig["server"], rig["servers"]["Builtin"]["url"], rig["token"]
    with _post(url, token, CALL, stream=True) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines()
        # The server holds its second event until released: the first must already be here.
        assert next(lines) == b"event: message" and next(lines) == b'data: {"progress":1}'
        assert not server.release.is_set()
        server.release.set()
        rest = b"\n".join(lines)
    assert b'"text": "done"' in rest


def test_old_sse_transport_posts_back_through_the_proxy_and_nothing_else_is_reachable(
        rig: dict[str, Any]) -> None:
    proxy, server, token = rig["proxy"], rig["server"], rig["token"]
    legacy = rig["servers"]["Legacy"]["url"]
    auth = {"Authorization": f"Bearer {token}"}
    with requests.get(legacy, headers=auth, stream=True, timeout=TIMEOUT) as stream:
        lines = stream.iter_lines()
        assert next(lines) == b"event: endpoint"
        endpoint = next(lines).decode().removeprefix("data: ")
        assert endpoint == "/mcp/Legacy/messages?session_id=abc"
        posted = requests.post(proxy.url + endpoint, data=b"{}", headers=auth, timeout=TIMEOUT)
        assert posted.status_code == 202
        server.release.set()
    assert requests.get(f"{proxy.url}/mcp/Builtin/other", headers=auth, timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{proxy.url}/mcp/Third/mcp", headers=auth, timeout=TIMEOUT).status_code == 404
    reached = [(r.method, r.path, r.query, r.authorization) for r in server.requests]
    assert reached == [("GET", "/sse", "", f"Bearer {JWT}"),
                       ("POST", "/messages", "session_id=abc", f"Bearer {JWT}")]


def test_the_childs_mcp_config_and_environment_hold_no_jwt(rig: dict[str, Any], tmp_path: Path) -> None:
    proxy, token, paths = rig["proxy"], rig["token"], rig["paths"]
    config = agent_config(tmp_path, "http://127.0.0.1:9", mcp_servers=proxy.upstream().mcp_servers)
    child = ChildSandbox(STATE, token=token, proxy_url=proxy.url)
    options = build_options(config, paths, OptionInputs(sandbox=child), inherited={"AIWM_JWT": JWT})
    source = child_mcp_source(paths, token)
    assert options.env["AIWM_SANDBOX_MCP"] == str(source)
    assert options.mcp_servers == f"/tools/aiwm-agentd/run/{source.name}"
    text = source.read_text()
    assert source.stat().st_mode & 0o777 == 0o600 and token in text
    child_side = text + "\n".join(f"{k}={v}" for k, v in options.env.items())
    leaked = [form for form in logs.encoded_forms(JWT) if form in child_side]
    assert leaked == []
    assert json.loads(text)["mcpServers"]["Third"]["headers"] == {"Authorization": "Bearer own"}
    assert not paths.mcp_config.exists()  # the shared file with the JWT is not written for a separated child
    forget_child(paths, token)
    assert not source.exists()


def test_behind_the_realtime_mcp_proxy_the_child_gets_neither_its_secret_nor_the_jwt(tmp_path: Path) -> None:
    """The default (AIWM_MCP_PROXY=true): the config names the realtime proxy with its per-daemon secret; the
    child is given the API proxy and its own token instead, and the JWT still arrives at the server."""
    from aiwm_agentd.realtime.mcp_proxy import McpProxy

    server = FakeMcpServer().start()
    realtime = McpProxy(lambda: JWT)
    configured = realtime.rewrite(_servers(server.url, JWT), 1)
    secret = configured["Builtin"]["headers"]["Authorization"].split()[1]
    proxy = ApiProxy(Upstream("http://127.0.0.1:9", "sk-daemon", "", configured))
    proxy.start()
    try:
        token = proxy.issue("conv")
        paths = RunnerPaths.for_state_dir(tmp_path / "aiwm-agentd")
        source = write_child_mcp_config(paths, ChildSandbox(STATE, token=token, proxy_url=proxy.url), configured)
        text = source.read_text()
        assert secret not in text and secret.split(".")[0] not in text and JWT not in text
        url = json.loads(text)["mcpServers"]["Builtin"]["url"]
        assert _post(url, token, INIT).status_code == 200
    finally:
        proxy.stop()
        realtime.close()
        server.stop()
    assert [r.authorization for r in server.requests] == [f"Bearer {JWT}"]
