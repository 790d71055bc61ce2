"""mcp_routes' pure parts: which MCP entries carry the daemon's credential, the child's view of them, which
paths a route forwards, and the old SSE transport's `endpoint` event pointed back at the proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiwm_agentd.runner.options import ChildSandbox, RunnerPaths, write_child_mcp_config
from aiwm_agentd.sandbox.identity import SandboxState
from aiwm_agentd.sandbox.mcp_routes import (
    EndpointRewriter,
    McpRoutes,
    Target,
    carries_daemon_credential,
    child_servers,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"
SERVERS: dict[str, Any] = {
    "Builtin": {"type": "http", "url": "https://ctl.example/api/mcp?org=1", "headers": {"Authorization": "Bearer x"}},
    "Origin": {"type": "http", "url": "https://ctl.example/other", "headers": {"authorization": f"Bearer {JWT}"}},
    "McpProxy": {"type": "http", "url": "http://127.0.0.1:4000/mcp/Builtin",
                 "headers": {"Authorization": "Bearer s.1"}},
    "Third": {"type": "http", "url": "https://third.example/mcp", "headers": {"Authorization": "Bearer own-key"}},
    "Open": {"type": "sse", "url": "https://open.example/sse"},
    "Local": {"command": "/usr/bin/mcp-tool", "args": []},
}


def test_only_entries_with_a_daemon_credential_are_proxied() -> None:
    carried = {name for name, spec in SERVERS.items() if carries_daemon_credential(name, spec)}
    assert carried == {"Builtin", "Origin", "McpProxy"}
    assert not carries_daemon_credential("Builtin", {"type": "http", "url": "https://ctl.example/mcp"})
    assert not carries_daemon_credential("Builtin", None)


def test_child_view_has_the_token_and_keeps_third_party_entries() -> None:
    view = child_servers(SERVERS, "aiwm-child-t", "http://127.0.0.1:7/")
    assert view["Builtin"] == {"type": "http", "url": "http://127.0.0.1:7/mcp/Builtin/api/mcp?org=1",
                               "headers": {"Authorization": "Bearer aiwm-child-t"}}
    assert view["McpProxy"]["url"] == "http://127.0.0.1:7/mcp/McpProxy/mcp/Builtin"
    for name in ("Third", "Open", "Local"):
        assert view[name] == SERVERS[name]
    assert JWT not in repr(view) and "s.1" not in repr(view)
    assert child_servers(SERVERS, "", "http://127.0.0.1:7") == SERVERS  # no token: unchanged


def test_a_server_name_is_quoted_in_its_route() -> None:
    spec = {"type": "http", "url": "https://ctl.example/mcp", "headers": {"Authorization": f"Bearer {JWT}"}}
    view = child_servers({"my server/x": spec}, "t", "http://127.0.0.1:7")
    assert view["my server/x"]["url"] == "http://127.0.0.1:7/mcp/my%20server%2Fx/mcp"
    target = McpRoutes().resolve({"my server/x": spec}, "/mcp/my%20server%2Fx/mcp", "")
    assert target is not None and target.url == "https://ctl.example/mcp"


def test_resolve_forwards_the_configured_path_with_the_current_headers_only() -> None:
    routes = McpRoutes()
    target = routes.resolve(SERVERS, "/mcp/Builtin/api/mcp", "org=1")
    assert target is not None
    assert target.url == "https://ctl.example/api/mcp?org=1" and target.headers == {"Authorization": "Bearer x"}
    assert routes.resolve(SERVERS, "/mcp/Builtin/api/admin", "") is None  # not the MCP endpoint
    assert routes.resolve(SERVERS, "/mcp/Third/mcp", "") is None  # no daemon credential: not ours to serve
    assert routes.resolve(SERVERS, "/mcp/Nope/mcp", "") is None


def test_an_announced_endpoint_opens_that_path_only() -> None:
    routes = McpRoutes()
    legacy = {"Legacy": {"type": "sse", "url": "https://ctl.example/sse",
                         "headers": {"Authorization": f"Bearer {JWT}"}}}
    assert routes.resolve(legacy, "/mcp/Legacy/messages", "session_id=1") is None
    routes.announce("Legacy", "https://ctl.example/messages?session_id=1")
    target = routes.resolve(legacy, "/mcp/Legacy/messages", "session_id=1")
    assert target is not None and target.url == "https://ctl.example/messages?session_id=1"
    assert routes.resolve(legacy, "/mcp/Legacy/other", "") is None


def _rewriter(announced: list[tuple[str, str]]) -> EndpointRewriter:
    target = Target("Legacy", "https://ctl.example/base/sse", {}, "sse")
    return EndpointRewriter(target, lambda name, url: announced.append((name, url)))


def test_endpoint_event_is_rewritten_even_split_across_chunks() -> None:
    announced: list[tuple[str, str]] = []
    rewriter = _rewriter(announced)
    out = rewriter.feed(b"event: endpoint\r\nda")
    assert out == b""  # an event is passed on when it is complete
    out += rewriter.feed(b"ta: /messages?session_id=abc\r\n\r\nevent: message\ndata: {}\n")
    assert out == b"event: endpoint\r\ndata: /mcp/Legacy/messages?session_id=abc\r\n\r\n"
    assert rewriter.feed(b"\n") == b"event: message\ndata: {}\n\n"
    assert announced == [("Legacy", "https://ctl.example/messages?session_id=abc")]


def test_relative_and_foreign_endpoints() -> None:
    announced: list[tuple[str, str]] = []
    rewriter = _rewriter(announced)
    assert rewriter.feed(b"event: endpoint\ndata: messages?s=2\n\n") == \
        b"event: endpoint\ndata: /mcp/Legacy/base/messages?s=2\n\n"
    foreign = b"event: endpoint\ndata: https://elsewhere.example/messages\n\n"
    assert rewriter.feed(foreign) == foreign
    assert [url for _, url in announced] == ["https://ctl.example/base/messages?s=2"]
    assert rewriter.feed(b": keep-alive") == b"" and rewriter.flush() == b": keep-alive"


def test_per_child_sources_are_swept_at_start(tmp_path: Path) -> None:
    paths = RunnerPaths.for_state_dir(tmp_path)
    child = ChildSandbox(SandboxState(True, "on"), token="aiwm-child-old", proxy_url="http://127.0.0.1:7")
    source = write_child_mcp_config(paths, child, SERVERS)
    assert source.parent == paths.children_dir and "aiwm-child-old" not in source.name
    paths.create()
    assert not source.exists()
