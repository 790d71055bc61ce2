"""ControllerClient against `responses`: every failure row, every wire version, caps and headers."""

from __future__ import annotations

import base64
import json
import time
import uuid
from email.utils import formatdate
from typing import Any

import pytest
import requests
import responses

from aiwm_agentd.controller.client import MAX_RESPONSE_BYTES, ControllerClient, ControllerError

BASE = "http://127.0.0.1:3305"
AGENT = "65a1b2c3d4e5f60718293a4b"
SECRET = "s3cr3t-Agent-Secret-4711"
CONNECT = f"{BASE}/agents/{AGENT}/connect"
HEARTBEAT = f"{BASE}/agents/{AGENT}/heartbeat"
CONFIG = f"{BASE}/agents/{AGENT}/config"
DISCONNECT = f"{BASE}/agents/{AGENT}/disconnect"


def make_jwt(exp: float | None = None, **claims: Any) -> str:
    def enc(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    payload = {"sub": AGENT, "iat": int(time.time()), **claims}
    if exp is not None:
        payload["exp"] = int(exp)
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


TOKEN = make_jwt(time.time() + 86400)


def v1_body() -> dict[str, Any]:
    return {
        "token": TOKEN,
        "instruction": "You are a helpful AI assistant...\n\n## Guidelines\n1. Be polite\n2. Be accurate",
        "tools": [
            {
                "_id": "tool-id-1", "name": "read-file", "type": "builtin",
                "description": "Read files from filesystem", "category": "productivity",
                "schema": {"inputSchema": {"type": "object"}, "outputSchema": {"type": "object"}},
            }
        ],
        "agent": {"id": AGENT, "name": "My Agent", "orgId": "org-id"},
        "settings": {
            "claudeModel": "claude-3-5-haiku-latest", "maxTurns": 100, "permissionMode": "bypassPermissions",
            "resume": True, "claudeOAuthToken": "oauth-token-here",
            "discord": {"token": "discord-token", "channelIds": ["123456789"], "botId": "bot-id"},
            "telegram": {"token": "telegram-token", "groupIds": ["-1001234567890"], "botUsername": "my_bot"},
        },
    }


def v2_body() -> dict[str, Any]:
    return {
        "accessToken": TOKEN, "expiresIn": 86400, "refreshToken": None, "refreshExpiresIn": 0,
        "tokenType": "bearer", "mcpEndpoint": f"{BASE}/mcp",
        "instruction": "Be helpful.\n\n## Guidelines\n1. Be brief", "tools": ["read-file", {"name": "search"}],
        "settings": {"claude_model": "claude-sonnet-4-5"},
    }


def v3_body() -> dict[str, Any]:
    body = v2_body()
    del body["tools"], body["mcpEndpoint"]
    body["mcpServers"] = {
        "Builtin": {"type": "http", "url": f"{BASE}/mcp", "headers": {"Authorization": f"Bearer {TOKEN}"}}
    }
    return body


def v4_body() -> dict[str, Any]:
    body = v3_body()
    body["instruction"] = {"id": "inst-1", "systemPrompt": "You are Ada.", "guidelines": ["Be polite", "Be short"]}
    body["deployment"] = {
        "id": "dep-1", "provider": "anthropic", "model": "claude-haiku-4-5",
        "baseAPIEndpoint": "http://127.0.0.1:3400/proxy", "apiEndpoint": "http://127.0.0.1:3400/proxy/v1/messages",
    }
    return body


def v5_body() -> dict[str, Any]:
    body = v4_body()
    body["instruction"] = {"id": "inst-1", "systemPrompt": "You are Ada."}
    body.update(
        id=AGENT, name="Ada", tools=["SearchMemory"], allowedFunctions=["mcp__Builtin__SearchMemory"],
        framework="claude-agent-sdk",
        channels=[{"platform": "discord", "label": "main", "enabled": True, "token": "discord-chan-token",
                   "botId": "42", "channelId": "111,222", "requireMentions": False, "verboseLogging": False}],
    )
    body["settings"] = {"assistant_maxConcurrency": 3, "assistant_idleTimeoutMs": 60000}
    return body


def error_body(status: int, message: str, path: str = f"/agents/{AGENT}/connect", **extra: Any) -> dict[str, Any]:
    return {"statusCode": status, "message": message, "timestamp": "2026-11-26T16:00:00.000Z", "path": path,
            "correlationId": str(uuid.uuid4()), **extra}


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client():
    c = ControllerClient(BASE, AGENT, SECRET, timeout=2.0)
    yield c
    c.close()


def assert_no_secret(exc: ControllerError) -> None:
    texts = [str(exc), exc.message, exc.describe(), repr(exc), *exc.errors]
    for text in texts:
        assert SECRET not in text


# -- connect failures (controller-versions.md table) ---------------------------------------------

FAILURE_ROWS = [
    (401, "Invalid credentials", {}, "invalid_credentials", True),
    (401, "Agent is suspended", {}, "suspended", True),
    (401, "Agent has no secret configured", {}, "no_secret", True),
    (404, f"Agent with ID {AGENT} not found", {}, "not_found", True),
    (500, "Internal server error", {}, "server_error", False),
    (400, "Validation failed", {"errors": ["secret must be a string", "secret should not be empty"]},
     "rejected", True),
]


@pytest.mark.parametrize(("status", "message", "extra", "kind", "permanent"), FAILURE_ROWS,
                         ids=[r[3] for r in FAILURE_ROWS])
def test_connect_failure_rows(rsps, client, status, message, extra, kind, permanent):
    rsps.post(CONNECT, json=error_body(status, message, **extra), status=status)
    with pytest.raises(ControllerError) as info:
        client.connect()
    exc = info.value
    assert exc.kind == kind
    assert exc.permanent is permanent
    assert exc.status == status
    assert exc.message == message
    assert exc.errors == tuple(extra.get("errors", ()))
    assert_no_secret(exc)


def test_validation_errors_surfaced_in_text(rsps, client):
    rsps.post(CONNECT, status=400, json=error_body(400, "Validation failed", errors=["secret must be a string"]))
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert "secret must be a string" in str(info.value)
    assert info.value.mentions("must be a string")


def test_nest_message_list_becomes_errors(rsps, client):
    rsps.post(CONNECT, status=400, json={"statusCode": 400, "message": ["secret must be a string"]})
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "rejected"
    assert info.value.errors == ("secret must be a string",)
    assert info.value.message == "Validation failed"


def test_echoed_secret_never_in_error_text(rsps, client):
    # A proxy or a buggy controller that echoes the request must not put the secret into logs.
    rsps.post(CONNECT, status=400, json=error_body(400, f"bad secret {SECRET}", errors=[f"secret {SECRET} bad"]))
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert_no_secret(info.value)


def test_connect_sends_secret_body(rsps, client):
    rsps.post(CONNECT, json=v1_body(), status=201)
    client.connect()
    sent = rsps.calls[0].request
    assert json.loads(sent.body) == {"secret": SECRET}
    assert "Authorization" not in sent.headers


# -- success -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201])
def test_connect_success_codes(rsps, client, status):
    rsps.post(CONNECT, json=v1_body(), status=status)
    config = client.connect()
    assert config.token == TOKEN


def test_connect_v1(rsps, client):
    rsps.post(CONNECT, json=v1_body(), status=201)
    c = client.connect()
    assert c.wire_version == "v1"
    assert c.tools == ("read-file",)
    assert c.instruction.endswith("## Guidelines\n1. Be polite\n2. Be accurate")
    assert (c.agent_id, c.agent_name, c.org_id) == (AGENT, "My Agent", "org-id")
    assert c.settings["discord"]["channelIds"] == ["123456789"]
    assert c.mcp_servers == {}


def test_connect_v2(rsps, client):
    rsps.post(CONNECT, json=v2_body(), status=201)
    c = client.connect()
    assert c.wire_version == "v2"
    assert c.tools == ("read-file", "search")
    assert c.mcp_servers["Builtin"]["url"] == f"{BASE}/mcp"
    assert c.expires_at is not None and c.expires_at <= time.time() + 86400 + 1


def test_connect_v3(rsps, client):
    rsps.post(CONNECT, json=v3_body(), status=201)
    c = client.connect()
    assert c.wire_version == "v3"
    assert c.tools is None
    assert c.mcp_servers["Builtin"]["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_connect_v4(rsps, client):
    rsps.post(CONNECT, json=v4_body(), status=201)
    c = client.connect()
    assert c.wire_version == "v4"
    assert c.instruction == "You are Ada.\n\n## Guidelines\n1. Be polite\n2. Be short"
    assert c.deployment_base_url == "http://127.0.0.1:3400/proxy"


def test_connect_v5(rsps, client):
    rsps.post(CONNECT, json=v5_body(), status=201)
    c = client.connect()
    assert c.wire_version == "v5"
    assert c.instruction == "You are Ada."
    assert c.tools == ("SearchMemory",)
    assert c.allowed_functions == ("mcp__Builtin__SearchMemory",)
    assert (c.agent_id, c.agent_name) == (AGENT, "Ada")
    [chan] = c.channels
    assert (chan.platform, chan.enabled, chan.channel_ids, chan.require_mentions, chan.bot_id) == (
        "discord", True, ("111", "222"), False, "42")


def test_connect_without_token_is_invalid(rsps, client):
    body = v2_body()
    body["accessToken"] = ""
    rsps.post(CONNECT, json=body, status=201)
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "invalid_response"
    assert not info.value.permanent


def test_fetch_config_with_empty_access_token(rsps, client):
    body = v5_body()
    body.update(accessToken="", expiresIn=0)
    rsps.get(CONFIG, json=body, status=200)
    c = client.fetch_config(TOKEN)
    assert c.token == "" and c.wire_version == "v5"
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


# -- Retry-After ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limited"), (503, "server_error")])
def test_retry_after_seconds(rsps, client, status, kind):
    rsps.post(CONNECT, status=status, json=error_body(status, "busy"), headers={"Retry-After": "42"})
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == kind
    assert not info.value.permanent
    assert info.value.retry_after == 42.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_http_date(rsps, client, status):
    when = formatdate(time.time() + 120, usegmt=True)
    rsps.post(CONNECT, status=status, json=error_body(status, "busy"), headers={"Retry-After": when})
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.retry_after is not None
    assert 110 <= info.value.retry_after <= 121


def test_no_retry_after(rsps, client):
    rsps.post(CONNECT, status=429, json=error_body(429, "Too Many Requests"))
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.retry_after is None


# -- transport failures --------------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "kind"), [
    (requests.Timeout("read timed out"), "timeout"),
    (requests.ConnectTimeout("connect timed out"), "timeout"),
    (requests.ConnectionError("[Errno 111] Connection refused"), "network"),
])
def test_transport_failures(rsps, client, exc, kind):
    rsps.post(CONNECT, body=exc)
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == kind
    assert not info.value.permanent
    assert info.value.status is None
    assert info.value.correlation_id
    assert_no_secret(info.value)


def test_connection_refused_reason_is_short(rsps, client):
    rsps.post(CONNECT, body=requests.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded (Caused by ... Connection refused)"))
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.message == "Connection refused"


# -- invalid responses ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201])
def test_non_json_2xx(rsps, client, status):
    rsps.post(CONNECT, body="<html>gateway</html>", status=status, content_type="text/html")
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "invalid_response"
    assert info.value.message == "the response is not JSON"


def test_non_json_heartbeat_answer(rsps, client):
    rsps.post(HEARTBEAT, body="OK", status=201, content_type="text/plain")
    with pytest.raises(ControllerError) as info:
        client.heartbeat(TOKEN, "idle", {})
    assert info.value.kind == "invalid_response"


def test_non_json_error_uses_reason(rsps, client):
    rsps.post(CONNECT, body="<html>Bad Gateway</html>", status=502, content_type="text/html")
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "server_error"
    assert info.value.message == "Bad Gateway"


def test_json_array_body_is_invalid(rsps, client):
    rsps.post(CONNECT, json=[1, 2], status=201)
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "invalid_response"


def test_oversize_with_content_length(rsps, client):
    body = b"{" + b" " * (MAX_RESPONSE_BYTES + 10) + b"}"
    rsps.post(CONNECT, body=body, status=201, auto_calculate_content_length=True)
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "invalid_response"
    assert "cap" in info.value.message
    assert str(MAX_RESPONSE_BYTES + 12) in info.value.message  # the declared length is the reason


def test_oversize_without_content_length(rsps, client):
    body = json.dumps({**v1_body(), "pad": "x" * (MAX_RESPONSE_BYTES + 10)}).encode()
    rsps.post(CONNECT, body=body, status=201)
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "invalid_response"
    assert "exceeds" in info.value.message
    assert str(len(body)) not in info.value.message  # found by counting, not from a header


def test_just_under_cap_is_fine(rsps, client):
    body = json.dumps(v1_body()).encode()
    body = body[:-1] + b" " * (MAX_RESPONSE_BYTES - len(body)) + b"}"
    assert len(body) == MAX_RESPONSE_BYTES
    rsps.post(CONNECT, body=body, status=201, auto_calculate_content_length=True)
    assert client.connect().token == TOKEN


@pytest.mark.parametrize(("field", "value", "named"), [
    ("tools", "read-file", "tools"),
    ("tools", [1, 2], "tools[0]"),
    ("instruction", 42, "instruction"),
    ("settings", ["a"], "settings"),
    ("accessToken", 123, "accessToken"),
    ("mcpServers", {"Builtin": "http://x"}, "mcpServers.Builtin"),
    ("channels", {"platform": "discord"}, "channels"),
    ("allowedFunctions", "all", "allowedFunctions"),
])
def test_wrong_types_name_the_field(rsps, client, field, value, named):
    body = v5_body()
    body[field] = value
    rsps.post(CONNECT, json=body, status=201)
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.kind == "invalid_response"
    assert info.value.message.startswith(named)


# -- correlation ids and auth --------------------------------------------------------------------

def test_correlation_id_sent_on_every_request(rsps, client):
    rsps.post(CONNECT, json=v1_body(), status=201)
    rsps.post(HEARTBEAT, json={"success": True}, status=201)
    rsps.get(CONFIG, json=v1_body())
    rsps.post(DISCONNECT, json={"success": True}, status=201)
    client.connect()
    client.heartbeat(TOKEN, "idle", {})
    client.fetch_config(TOKEN)
    client.disconnect(TOKEN, "shutdown")
    ids = [call.request.headers["x-correlation-id"] for call in rsps.calls]
    assert len(ids) == 4
    assert len(set(ids)) == 4  # fresh per request
    for cid in ids:
        uuid.UUID(cid)


def test_returned_correlation_id_is_used(rsps, client):
    rsps.post(CONNECT, status=401, json=error_body(401, "Invalid credentials"),
              headers={"x-correlation-id": "server-cid-1"})
    rsps.post(HEARTBEAT, json={"success": True}, status=201, headers={"x-correlation-id": "server-cid-2"})
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.correlation_id == "server-cid-1"
    assert client.heartbeat(TOKEN, "idle", {}).correlation_id == "server-cid-2"


def test_sent_correlation_id_kept_without_echo(rsps, client):
    rsps.post(CONNECT, status=500, json=error_body(500, "Internal server error"))
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.correlation_id == rsps.calls[0].request.headers["x-correlation-id"]


def test_bearer_on_heartbeat_config_disconnect(rsps, client):
    rsps.post(HEARTBEAT, json={"success": True}, status=201)
    rsps.get(CONFIG, json=v3_body())
    rsps.post(DISCONNECT, json={"success": True}, status=201)
    client.heartbeat(TOKEN, "online", {"cpu": 1})
    client.fetch_config(TOKEN)
    client.disconnect(TOKEN, "shutdown")
    for call in rsps.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(rsps.calls[2].request.body) == {"reason": "shutdown"}


def test_heartbeat_body_shape(rsps, client):
    rsps.post(HEARTBEAT, json={"success": True}, status=201)
    metrics = {"cpu": 45, "memory": 60, "uptime": 3600, "activeConnections": 3}
    result = client.heartbeat(TOKEN, "busy", metrics)
    assert json.loads(rsps.calls[0].request.body) == {"status": "busy", "metrics": metrics}
    assert result.body == {"success": True}
    assert result.notices == {}


def test_heartbeat_v5_notices(rsps, client):
    rsps.post(HEARTBEAT, status=201, json={"success": True, "work": {"id": "w1"}, "systemMessage": "hello",
                                           "systemTask": None})
    result = client.heartbeat(TOKEN, "idle", {})
    assert result.notices == {"work": {"id": "w1"}, "systemMessage": "hello"}


def test_heartbeat_empty_body_is_ok(rsps, client):
    rsps.post(HEARTBEAT, body="", status=201)
    assert client.heartbeat(TOKEN, "idle", {}).body == {}


@pytest.mark.parametrize(("status", "message", "kind", "permanent"), [
    (401, "Unauthorized", "unauthorized", False),
    (404, f"Agent with ID {AGENT} not found", "not_found", True),
    (400, "Agent is suspended. Heartbeat rejected.", "suspended", True),
    (400, "Validation failed", "rejected", True),
])
def test_heartbeat_failures(rsps, client, status, message, kind, permanent):
    extra = {"errors": ["status must be one of the following values: idle, busy"]} if kind == "rejected" else {}
    rsps.post(HEARTBEAT, status=status, json=error_body(status, message, f"/agents/{AGENT}/heartbeat", **extra))
    with pytest.raises(ControllerError) as info:
        client.heartbeat(TOKEN, "online", {})
    assert (info.value.kind, info.value.permanent) == (kind, permanent)
    if extra:
        assert info.value.mentions("status")


def test_redirect_not_followed(rsps, client):
    rsps.post(CONNECT, status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})
    with pytest.raises(ControllerError) as info:
        client.connect()
    assert info.value.status == 302
    assert len(rsps.calls) == 1
