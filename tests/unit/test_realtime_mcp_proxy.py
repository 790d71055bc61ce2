"""The loopback MCP proxy against the dev controller's real MCP endpoint on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from aiwm_agentd.realtime.mcp_proxy import McpProxy
from aiwm_devtools.devcontroller import DevController

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
NOTE = {"jsonrpc": "2.0", "method": "notifications/initialized"}


@pytest.fixture
def ctl() -> Iterator[DevController]:
    with DevController(bcrypt_rounds=4) as controller:
        yield controller


def servers(ctl: DevController) -> dict[str, object]:
    return {"Builtin": {"type": "http", "url": f"{ctl.url}/mcp", "headers": {"Authorization": "Bearer <USER>"}},
            "local": {"type": "stdio", "command": "x"}}


def test_requests_carry_the_current_token_and_the_cli_never_sees_it(ctl: DevController) -> None:
    token = [ctl.issue_token()]
    proxy = McpProxy(lambda: token[0])
    try:
        rewritten = proxy.rewrite(servers(ctl), generation=1)
        spec = rewritten["Builtin"]
        assert isinstance(spec, dict) and spec["url"].startswith(proxy.url) and token[0] not in str(rewritten)
        assert rewritten["local"] == {"type": "stdio", "command": "x"}  # not HTTP: untouched
        r = requests.post(spec["url"], json=INIT, headers=spec["headers"], timeout=5)
        assert r.status_code == 200 and r.json()["result"]["protocolVersion"] == "2025-06-18"
        ctl.revoke_tokens()
        assert requests.post(spec["url"], json=INIT, headers=spec["headers"], timeout=5).status_code == 401
        token[0] = ctl.issue_token()  # a reconnect: the same CLI configuration works with the new token
        assert requests.post(spec["url"], json=INIT, headers=spec["headers"], timeout=5).status_code == 200
        assert requests.post(spec["url"], json=INIT, headers={"Authorization": "Bearer nope.1"},
                             timeout=5).status_code == 401
        assert requests.post(f"{proxy.url}/mcp/other", json=INIT, headers=spec["headers"],
                             timeout=5).status_code == 404
    finally:
        proxy.close()


def test_a_rejected_notification_is_absorbed_and_other_errors_pass_through(ctl: DevController) -> None:
    ctl.mcp_rejects_notifications = True
    proxy = McpProxy(ctl.issue_token)
    try:
        spec = proxy.rewrite(servers(ctl), generation=1)["Builtin"]
        assert isinstance(spec, dict)
        r = requests.post(spec["url"], json=NOTE, headers=spec["headers"], timeout=5)
        assert r.status_code == 202 and proxy.absorbed == 1
        bad = {"jsonrpc": "1.0", "id": 3, "method": "x"}  # a request (with an id) keeps the controller's answer
        assert requests.post(spec["url"], json=bad, headers=spec["headers"], timeout=5).status_code == 400
        assert proxy.absorbed == 1
    finally:
        proxy.close()


def test_a_refused_work_transition_is_reported_once(ctl: DevController) -> None:
    ctl.work.read_only = True  # the viewer role
    work_id = ctl.work.assign("t")
    proxy = McpProxy(ctl.issue_token)
    try:
        spec = proxy.rewrite(servers(ctl), generation=1)["Builtin"]
        assert isinstance(spec, dict)
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": "StartWork", "arguments": {"workId": work_id}}}
        r = requests.post(spec["url"], json=call, headers=spec["headers"], timeout=5)
        assert r.status_code == 200 and r.json()["result"]["isError"] is True  # the model still gets the answer
        assert proxy.permission_problem.startswith("the controller refused StartWork: You do not have permission")
    finally:
        proxy.close()


def test_close_does_not_wait_for_the_servers_poll() -> None:
    """serve_forever() polls every 0.5 s; closing must not cost the daemon's stop that long (it did: SIGTERM ->
    exit went from 7 ms to 515 ms once the proxy ran)."""
    import time

    proxy = McpProxy(lambda: "token")
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 0.3
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.url, timeout=1)
