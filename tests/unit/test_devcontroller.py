"""The embedded dev controller, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from aiwm_agentd.controller.wire import parse_connect_response
from aiwm_devtools.devcontroller import DevController
from aiwm_devtools.workqueue import tool_definitions
from tests.fakes.faulty_controller import FaultyController
from tests.harness import ROOT

ROUNDS = 4  # bcrypt's minimum: ~1 ms per connect instead of ~70 ms at the real controller's 10
Make = Callable[..., DevController]


@pytest.fixture
def make() -> Iterator[Make]:
    started: list[DevController] = []

    def factory(version: str = "v5", **kwargs: Any) -> DevController:
        kwargs.setdefault("bcrypt_rounds", ROUNDS)
        controller = DevController(version=version, **kwargs).start()
        started.append(controller)
        return controller

    yield factory
    for controller in started:
        controller.stop()


@pytest.fixture
def ctl(make: Make) -> DevController:
    return make()


def connect(c: DevController, secret: Any = "<own>", agent_id: str | None = None, **kw: Any) -> requests.Response:
    body = {"secret": c.secret if secret == "<own>" else secret}
    return requests.post(f"{c.url}/agents/{agent_id or c.agent_id}/connect", json=body, timeout=5, **kw)


def token_of(c: DevController) -> str:
    r = connect(c)
    assert r.status_code in (200, 201), r.text
    body = r.json()
    return str(body.get("accessToken") or body["token"])


def heartbeat(c: DevController, token: str | None, body: Any, path: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = f"{c.url}{path or f'/agents/{c.agent_id}/heartbeat'}"
    return requests.post(url, json=body, headers=headers, timeout=5)


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


# ----------------------------------------------------------------------------------------- construction


def test_generated_credentials_and_bcrypt_hash_only() -> None:
    c = DevController()  # default rounds: what the real controller uses
    assert len(c.agent_id) == 24 and int(c.agent_id, 16) >= 0
    assert len(c.secret) == 64 and int(c.secret, 16) >= 0
    stored = c._agent.secret_hash
    assert stored is not None and stored.startswith(b"$2b$10$")
    assert c.secret.encode() not in stored
    assert DevController(bcrypt_rounds=ROUNDS).agent_id != c.agent_id


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "10.0.0.1", "::", "example.com", "localhost.evil"])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevController(host=host)


def test_env_lines_and_url(ctl: DevController) -> None:
    assert ctl.url == f"http://127.0.0.1:{ctl.port}" and ctl.port > 0
    assert ctl.env_lines() == [
        "AIWM_ENABLED=true",
        f"AIWM_BASE_URL={ctl.url}",
        f"AIWM_AGENT_ID={ctl.agent_id}",
        f"AIWM_AGENT_SECRET={ctl.secret}",
        "AGENT_NAME=Dev Agent",
    ]


# ------------------------------------------------------------------------------------------- connect


@pytest.mark.parametrize("version", ["v1", "v2", "v5"])
def test_connect_failure_table(make: Make, version: str) -> None:
    c = make(version)
    other = "0123456789abcdef01234567"

    def check(r: requests.Response, status: int, message: str, errors: list[str] | None = None) -> None:
        assert r.status_code == status, r.text
        body = r.json()
        assert body["statusCode"] == status and body["message"] == message
        if version == "v1":
            assert "error" in body
        else:
            assert body["path"] == urlpath(r) and body["correlationId"] == r.headers["x-correlation-id"]
            assert body["timestamp"].endswith("Z")
        if errors is not None:
            assert body["errors"] == errors

    check(connect(c, agent_id="not-an-object-id"), 500, "Internal server error")
    check(connect(c, agent_id="0123456789abcdef0123456"), 500, "Internal server error")  # 23 hex
    check(connect(c, agent_id=other), 404, f"Agent with ID {other} not found")
    check(connect(c, secret="wrong"), 401, "Invalid credentials")
    check(connect(c, secret=""), 400, "Validation failed", ["secret should not be empty"])
    check(connect(c, secret=12345), 400, "Validation failed", ["secret must be a string"])
    check(connect(c, secret=None), 400, "Validation failed", ["secret should not be empty", "secret must be a string"])
    missing = requests.post(f"{c.url}/agents/{c.agent_id}/connect", json={}, timeout=5)
    check(missing, 400, "Validation failed", ["secret should not be empty", "secret must be a string"])

    c.suspend()
    check(connect(c), 401, "Agent is suspended")
    check(connect(c, secret="wrong"), 401, "Agent is suspended")  # checked before the secret
    c.unsuspend()
    assert connect(c).status_code == (200 if version == "v1" else 201)

    c.clear_secret()
    assert c.secret == ""
    check(connect(c, secret="anything"), 401, "Agent has no secret configured")
    secret = c.regenerate_secret()
    assert connect(c, secret=secret).ok

    c.delete()
    check(connect(c, secret=secret), 404, f"Agent with ID {c.agent_id} not found")
    assert c.connects == 2


def urlpath(r: requests.Response) -> str:
    return urlsplit(r.url).path


def test_connect_v1_shape(make: Make) -> None:
    c = make("v1")
    c.set_instruction("Be a dev agent.", ["a", "b"])
    c.set_tools(["read-file", {"_id": "x" * 24, "name": "custom", "type": "api"}])
    c.set_settings({"claudeModel": "m", "discord": {"token": "d", "channelIds": ["1"]}})
    r = connect(c)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "instruction", "tools", "agent", "settings"}
    assert body["agent"]["id"] == c.agent_id and body["agent"]["name"] == "Dev Agent"
    assert body["tools"][0]["name"] == "read-file" and body["tools"][0]["status"] == "active"
    cfg = parse_connect_response(body)
    assert cfg.wire_version == "v1"
    assert cfg.instruction == "Be a dev agent.\n\n## Guidelines\n1. a\n2. b"
    assert cfg.tools == ("read-file", "custom")
    assert cfg.settings["claudeModel"] == "m"
    assert cfg.agent_id == c.agent_id and len(cfg.org_id) == 24


def test_connect_v2_shape(make: Make) -> None:
    c = make("v2")
    c.set_instruction("P", ["g"])
    body = connect(c).json()
    assert set(body) == {
        "accessToken", "expiresIn", "refreshToken", "refreshExpiresIn", "tokenType",
        "mcpEndpoint", "instruction", "tools", "settings",
    }  # fmt: skip
    assert (body["expiresIn"], body["refreshToken"], body["refreshExpiresIn"], body["tokenType"]) == (
        86400,
        None,
        0,
        "bearer",
    )
    assert body["mcpEndpoint"] == f"{c.url}/mcp"
    cfg = parse_connect_response(body)
    assert cfg.wire_version == "v2" and cfg.instruction == "P\n\n## Guidelines\n1. g" and cfg.tools == ()
    c.set_mcp(False)
    assert "mcpEndpoint" not in connect(c).json()


def test_connect_v3_shape(make: Make) -> None:
    c = make("v3")
    body = connect(c).json()
    assert "tools" not in body and "mcpEndpoint" not in body
    assert body["mcpServers"] == {
        "Builtin": {
            "type": "http",
            "url": f"{c.url}/mcp",
            "headers": {"Authorization": f"Bearer {body['accessToken']}"},
        }
    }
    cfg = parse_connect_response(body)
    assert cfg.wire_version == "v3" and cfg.tools is None
    assert cfg.instruction == "No instruction configured for this agent."
    c.set_mcp(False)
    assert "mcpServers" not in connect(c).json()


def test_connect_v4_shape(make: Make) -> None:
    c = make("v4")
    body = connect(c).json()
    assert body["instruction"] == {
        "id": "",
        "systemPrompt": "No instruction configured for this agent.",
        "guidelines": [],
    }
    assert "deployment" not in body and "tools" not in body
    c.set_instruction("You are the dev agent.", ["a", "b"])
    deployment = {
        "id": "d" * 24,
        "provider": "anthropic",
        "model": "claude-x",
        "baseAPIEndpoint": "http://127.0.0.1:9999/proxy",
        "apiEndpoint": "http://127.0.0.1:9999/proxy/v1/messages",
    }
    c.set_deployment(deployment)
    body = connect(c).json()
    assert body["instruction"]["systemPrompt"] == "You are the dev agent."
    assert body["instruction"]["guidelines"] == ["a", "b"] and len(body["instruction"]["id"]) == 24
    assert body["deployment"] == deployment
    cfg = parse_connect_response(body)
    assert cfg.wire_version == "v4"
    assert cfg.instruction == "You are the dev agent." + "\n\n## Guidelines\n1. a\n2. b"
    assert cfg.deployment_base_url == "http://127.0.0.1:9999/proxy"
    c.set_deployment(None)
    assert "deployment" not in connect(c).json()


def test_connect_v5_shape(make: Make) -> None:
    c = make("v5", agent_name="Five")
    c.set_instruction("Prompt", ["dropped in v5"])
    c.set_tools(["SearchMemory"])
    c.set_allowed_functions(["mcp__Builtin__SearchMemory"])
    channel = {
        "platform": "discord",
        "label": "main",
        "enabled": True,
        "token": "discord-token",
        "botId": "42",
        "channelId": "111,222",
        "requireMentions": True,
        "verboseLogging": False,
    }
    c.set_channels([channel])
    c.set_settings({"claude_model": "m", "assistant_maxConcurrency": "2"})
    body = connect(c).json()
    assert body["instruction"] == {"id": body["instruction"]["id"], "systemPrompt": "Prompt"}
    assert body["id"] == c.agent_id and body["name"] == "Five" and body["framework"]
    assert body["channels"] == [channel] and body["allowedFunctions"] == ["mcp__Builtin__SearchMemory"]
    assert "mcpServers" in body and "accessToken" in body
    cfg = parse_connect_response(body)
    assert cfg.wire_version == "v5"
    assert cfg.instruction == "Prompt"
    assert cfg.tools == ("SearchMemory",) and cfg.allowed_functions == ("mcp__Builtin__SearchMemory",)
    assert cfg.channels[0].channel_ids == ("111", "222") and cfg.channels[0].require_mentions is True
    assert cfg.agent_name == "Five" and cfg.agent_id == c.agent_id


def test_set_version_at_run_time(ctl: DevController) -> None:
    for version in ("v1", "v2", "v3", "v4", "v5"):
        ctl.set_version(version)
        assert parse_connect_response(connect(ctl).json()).wire_version == version
    with pytest.raises(ValueError):
        ctl.set_version("v6")


def test_jwt_claims_and_signature(make: Make) -> None:
    c = make("v5", token_ttl=3600)
    before = int(time.time())
    body = connect(c).json()
    token = body["accessToken"]
    header_b64, payload_b64, sig_b64 = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header_b64 + "==")) == {"alg": "HS256", "typ": "JWT"}
    expected = hmac.new(c.signing_key, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig_b64 + "=" * (-len(sig_b64) % 4)) == expected
    claim = claims(token)
    assert claim["sub"] == c.agent_id
    assert before <= claim["iat"] <= time.time()
    assert claim["exp"] == claim["iat"] + 3600
    assert body["expiresIn"] == 3600
    assert parse_connect_response(body).expires_at == claim["exp"]


def test_expired_token_is_unauthorized(ctl: DevController) -> None:
    old = ctl.issue_token(now=time.time() - 90000)
    r = heartbeat(ctl, old, {"status": "idle"})
    assert r.status_code == 401 and r.json()["message"] == "Unauthorized"


# ----------------------------------------------------------------------------------------- heartbeat


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4"])
def test_heartbeat_enum_v1_to_v4(make: Make, version: str) -> None:
    c = make(version)
    token = token_of(c)
    ok = 200 if version == "v1" else 201
    for status in ("online", "busy", "idle"):
        r = heartbeat(c, token, {"status": status, "metrics": {"cpu": 1}})
        assert r.status_code == ok and r.json() == {"success": True}
    assert heartbeat(c, token, {"status": "away"}).status_code == 400
    assert heartbeat(c, token, {}).status_code == 400
    c.suspend()  # only v5 rejects heartbeats of suspended agents
    assert heartbeat(c, token, {"status": "online"}).status_code == ok
    assert [h["status"] for h in c.heartbeats] == ["online", "busy", "idle", "online"]
    assert c.heartbeats[0]["metrics"] == {"cpu": 1}


def test_heartbeat_v5_rules(ctl: DevController) -> None:
    token = token_of(ctl)
    r = heartbeat(ctl, token, {"status": "online"})
    assert r.status_code == 400 and r.json()["message"] == "Validation failed"
    assert r.json()["errors"] == ["status must be one of the following values: idle, busy"]
    assert heartbeat(ctl, token, {"status": "busy"}).status_code == 201
    ctl.push_heartbeat_reply({"systemMessage": "hello"})
    assert heartbeat(ctl, token, {"status": "busy"}).json() == {"success": True}  # only idle gets it
    assert heartbeat(ctl, token, {"status": "idle"}).json() == {"success": True, "systemMessage": "hello"}
    assert heartbeat(ctl, token, {"status": "idle"}).json() == {"success": True}
    # token-identified heartbeat
    r = heartbeat(ctl, token, {"status": "idle"}, path="/agents/heartbeat")
    assert r.status_code == 201
    assert ctl.heartbeats[-1]["path"] == "/agents/heartbeat"
    ctl.suspend()
    r = heartbeat(ctl, token, {"status": "idle"})
    assert r.status_code == 400 and r.json()["message"] == "Agent is suspended. Heartbeat rejected."


def test_token_identified_heartbeat_is_v5_only(make: Make) -> None:
    c = make("v4")
    r = heartbeat(c, token_of(c), {"status": "idle"}, path="/agents/heartbeat")
    assert r.status_code == 404


@pytest.mark.parametrize("metrics", [[1, 2], "cpu=1", 3])
def test_heartbeat_metrics_must_be_an_object(ctl: DevController, metrics: Any) -> None:
    r = heartbeat(ctl, token_of(ctl), {"status": "idle", "metrics": metrics})
    assert r.status_code == 400 and r.json()["errors"] == ["metrics must be an object"]
    assert ctl.heartbeats == []


def test_heartbeat_auth(ctl: DevController) -> None:
    token = token_of(ctl)
    assert heartbeat(ctl, None, {"status": "idle"}).status_code == 401
    assert heartbeat(ctl, "garbage", {"status": "idle"}).status_code == 401
    assert heartbeat(ctl, token[:-2] + "AA", {"status": "idle"}).status_code == 401
    assert heartbeat(ctl, token, {"status": "idle"}).status_code == 201
    other = heartbeat(ctl, token, {"status": "idle"}, path="/agents/0123456789abcdef01234567/heartbeat")
    assert other.status_code == 401  # a token only speaks for its own agent
    ctl.revoke_tokens()
    r = heartbeat(ctl, token, {"status": "idle"})
    assert r.status_code == 401 and r.json()["message"] == "Unauthorized"
    assert heartbeat(ctl, token_of(ctl), {"status": "idle"}).status_code == 201  # reconnect = new token


def test_heartbeat_after_delete_is_404(ctl: DevController) -> None:
    token = token_of(ctl)
    ctl.delete()
    r = heartbeat(ctl, token, {"status": "idle"})
    assert r.status_code == 404 and r.json()["message"] == f"Agent with ID {ctl.agent_id} not found"
    ctl.undelete()
    assert heartbeat(ctl, token, {"status": "idle"}).status_code == 201


# --------------------------------------------------------------------------------- other endpoints


@pytest.mark.parametrize(("version", "ok"), [("v1", 200), ("v5", 201)])
def test_disconnect(make: Make, version: str, ok: int) -> None:
    c = make(version)
    token = token_of(c)
    url = f"{c.url}/agents/{c.agent_id}/disconnect"
    auth = {"Authorization": f"Bearer {token}"}
    r = requests.post(url, json={"reason": "shutdown"}, headers=auth, timeout=5)
    assert r.status_code == ok and r.json() == {"success": True}
    assert requests.post(url, json={"reason": "x"}, timeout=5).status_code == 401
    assert requests.post(url, json={"reason": 5}, headers=auth, timeout=5).status_code == 400
    assert c.disconnects == ["shutdown"]


def test_get_config(make: Make) -> None:
    c = make("v4")
    c.set_instruction("P", ["a"])
    token = token_of(c)
    url = f"{c.url}/agents/{c.agent_id}/config"
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["accessToken"] == "" and body["expiresIn"] == 0
    cfg = parse_connect_response(body)
    assert cfg.token == "" and cfg.instruction == "P\n\n## Guidelines\n1. a"
    assert requests.get(url, timeout=5).status_code == 401
    c.set_version("v1")
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 404


def test_regenerate_credentials(ctl: DevController) -> None:
    old = ctl.secret
    url = f"{ctl.url}/agents/{ctl.agent_id}/credentials/regenerate"
    assert requests.post(url, timeout=5).status_code == 401
    assert requests.post(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    agent_token = token_of(ctl)
    assert requests.post(url, headers={"Authorization": f"Bearer {agent_token}"}, timeout=5).status_code == 401
    r = requests.post(url, headers={"Authorization": f"Bearer {ctl.admin_token}"}, timeout=5)
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"agentId", "secret", "envConfig", "installScript"}
    assert body["agentId"] == ctl.agent_id and len(body["secret"]) == 64 and body["secret"] != old
    assert f"AIWM_AGENT_SECRET={body['secret']}" in body["envConfig"]
    assert body["installScript"].startswith("#!/bin/bash")
    assert ctl.secret == body["secret"]
    assert connect(ctl, secret=old).status_code == 401
    assert connect(ctl, secret=body["secret"]).status_code == 201


def test_correlation_id(ctl: DevController) -> None:
    r = connect(ctl, headers={"x-correlation-id": "corr-123"})
    assert r.headers["x-correlation-id"] == "corr-123"
    bad = connect(ctl, secret="wrong", headers={"x-correlation-id": "corr-456"})
    assert bad.headers["x-correlation-id"] == "corr-456" and bad.json()["correlationId"] == "corr-456"
    generated = connect(ctl).headers["x-correlation-id"]
    assert len(generated) == 36
    log = ctl.requests
    assert [e["correlation_id"] for e in log] == ["corr-123", "corr-456", generated]
    assert [e["status"] for e in log] == [201, 401, 201]
    token = token_of(ctl)
    requests.post(
        f"{ctl.url}/agents/{ctl.agent_id}/heartbeat",
        json={"status": "idle"},
        headers={"Authorization": f"Bearer {token}", "x-correlation-id": "hb-1"},
        timeout=5,
    )
    assert ctl.heartbeats[-1]["correlation_id"] == "hb-1"
    assert ctl.secret not in json.dumps(ctl.requests) and token not in json.dumps(ctl.requests)


def test_unknown_routes_oversized_and_non_json(ctl: DevController) -> None:
    r = requests.get(f"{ctl.url}/nope", timeout=5)
    assert r.status_code == 404 and r.json()["message"] == "Cannot GET /nope"
    assert requests.delete(f"{ctl.url}/agents/{ctl.agent_id}", timeout=5).status_code == 404
    url = f"{ctl.url}/agents/{ctl.agent_id}/connect"
    big = json.dumps({"secret": "x" * (1024 * 1024)})
    r = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 413
    r = requests.post(url, data="secret=abc", headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")


def test_builtin_mcp_endpoint(ctl: DevController) -> None:
    body = connect(ctl).json()
    server = body["mcpServers"]["Builtin"]
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    r = requests.post(server["url"], json=rpc, headers=server["headers"], timeout=5)
    assert r.status_code == 200 and r.json()["result"]["protocolVersion"] == "2025-06-18"
    tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert requests.post(server["url"], json=tools, headers=server["headers"], timeout=5).json()["result"] == {
        "tools": tool_definitions()
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert requests.post(server["url"], json=note, headers=server["headers"], timeout=5).status_code == 202
    assert requests.post(server["url"], json=rpc, timeout=5).status_code == 401
    # No server-initiated SSE stream: GET answers 405 (after the token check), as streamable HTTP wants.
    assert requests.get(server["url"], headers=server["headers"], timeout=5).status_code == 405
    assert requests.get(server["url"], timeout=5).status_code == 401


def test_admin_state_is_thread_safe_enough(ctl: DevController) -> None:
    import threading

    token = token_of(ctl)
    errors: list[int] = []

    def beat() -> None:
        for _ in range(10):
            code = heartbeat(ctl, token, {"status": "busy"}).status_code
            if code != 201:
                errors.append(code)

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(10):
        ctl.set_settings({"n": 1})
        ctl.set_tools(["a"])
    for t in threads:
        t.join()
    assert errors == [] and len(ctl.heartbeats) == 40


# ------------------------------------------------------------------------------------------- faults


@pytest.fixture
def faulty() -> Iterator[FaultyController]:
    with FaultyController(version="v5", bcrypt_rounds=ROUNDS) as f:
        yield f


def test_go_down_and_come_up_on_the_same_port(faulty: FaultyController) -> None:
    port, url = faulty.port, faulty.url
    assert connect(faulty.controller).status_code == 201
    faulty.go_down()
    with pytest.raises(requests.ConnectionError):
        connect(faulty.controller)
    faulty.come_up()
    assert faulty.port == port and faulty.url == url
    assert connect(faulty.controller).status_code == 201
    assert faulty.connects == 2  # state survives


def test_inject_503_with_retry_after_once(faulty: FaultyController) -> None:
    faulty.inject("POST", r"/connect$", 503, headers={"Retry-After": "1"})
    r = connect(faulty.controller, headers={"x-correlation-id": "c1"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.headers["x-correlation-id"] == "c1"
    assert r.json()["statusCode"] == 503 and r.json()["correlationId"] == "c1"
    assert connect(faulty.controller).status_code == 201
    assert [e["injected"] for e in faulty.requests] == [True, False]
    assert faulty.connects == 1


def test_inject_401_on_heartbeat_twice(faulty: FaultyController) -> None:
    token = token_of(faulty.controller)
    fault = faulty.inject("POST", r"/heartbeat$", 401, times=2)
    assert [heartbeat(faulty.controller, token, {"status": "idle"}).status_code for _ in range(3)] == [
        401,
        401,
        201,
    ]
    assert fault.hits == 2 and faulty.pending_faults == []


def test_inject_hang_longer_than_client_timeout(faulty: FaultyController) -> None:
    faulty.inject("POST", r"/connect$", 504, delay=30)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{faulty.url}/agents/{faulty.agent_id}/connect", json={"secret": "x"}, timeout=0.3)
    faulty.go_down()  # releases the hanging handler without an answer
    assert time.monotonic() - started < 5


def test_inject_delay_then_real_answer(faulty: FaultyController) -> None:
    faulty.inject("POST", r"/connect$", None, delay=0.3)
    started = time.monotonic()
    assert connect(faulty.controller).status_code == 201
    assert time.monotonic() - started >= 0.3


def test_inject_non_json_and_oversized_bodies(faulty: FaultyController) -> None:
    faulty.inject("POST", r"/connect$", 502, body="<html>Bad gateway</html>")
    r = connect(faulty.controller)
    assert r.status_code == 502 and r.text == "<html>Bad gateway</html>"
    with pytest.raises(ValueError):
        r.json()
    faulty.inject("POST", r"/connect$", 201, body=b"{" + b" " * (3 << 20), headers={"Content-Type": "application/json"})
    r = connect(faulty.controller)
    assert r.status_code == 201 and len(r.content) == (3 << 20) + 1
    faulty.inject("*", r"^/agents/", 500, body={"custom": True}, times=None)
    assert connect(faulty.controller).json() == {"custom": True}
    assert connect(faulty.controller).json() == {"custom": True}
    faulty.clear_faults()
    assert connect(faulty.controller).status_code == 201


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_prints_env_writes_env_out_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    env_out = tmp_path / "agent.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiwm_devtools", "--port", "0", "--wire-version", "v4",
         "--secret", "s3cret-value", "--env-out", str(env_out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(9)]  # 5 controller + 4 portal socket lines
        env = dict(line.split("=", 1) for line in lines)
        assert env["AIWM_ENABLED"] == "true" and env["AIWM_AGENT_SECRET"] == "s3cret-value"
        assert env["AIWM_REALTIME"] == "true" and env["AIWM_WS_NAMESPACE"] == "/ws"  # a v4 portal by default
        assert env["AIWM_WS_URL"].startswith("http://127.0.0.1:")
        assert env["AGENT_NAME"] == "Dev Agent"
        base = env["AIWM_BASE_URL"]
        assert base.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 5
        while not env_out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = requests.post(
            f"{base}/agents/{env['AIWM_AGENT_ID']}/connect",
            json={"secret": "s3cret-value"},
            headers={"x-correlation-id": "cli-1"},
            timeout=5,
        )
        assert r.status_code == 201 and isinstance(r.json()["instruction"], dict)
        assert stat.S_IMODE(os.stat(env_out).st_mode) == 0o600
        assert env_out.read_text().splitlines() == lines
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "POST /agents/" in stderr and "-> 201" in stderr and "cli-1" in stderr
    assert "s3cret-value" not in stderr and r.json()["accessToken"] not in stderr
