"""Pure wire parsing: instruction merge, expiry, v2 MCP, channels, fingerprint, version detection."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest

from aiwm_agentd.controller.wire import (
    WireError,
    compose_instruction,
    detect_version,
    jwt_expiry,
    parse_connect_response,
    split_ids,
)

NOW = 1_780_000_000.0


def make_jwt(claims: dict[str, Any]) -> str:
    def enc(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.c2lnbmF0dXJl"


# -- instruction ---------------------------------------------------------------------------------

def test_compose_with_guidelines_exact():
    value = {"id": "i", "systemPrompt": "You are Ada.", "guidelines": ["a", "b"]}
    assert compose_instruction(value) == "You are Ada.\n\n## Guidelines\n1. a\n2. b"


def test_compose_single_guideline_has_no_trailing_newline():
    assert compose_instruction({"systemPrompt": "P", "guidelines": ["only"]}) == "P\n\n## Guidelines\n1. only"


@pytest.mark.parametrize("value", [
    {"id": "i", "systemPrompt": "Prompt only", "guidelines": []},
    {"id": "i", "systemPrompt": "Prompt only"},
    {"id": "i", "systemPrompt": "Prompt only", "guidelines": None},
])
def test_compose_without_guidelines_is_prompt_only(value):
    assert compose_instruction(value) == "Prompt only"


def test_compose_v4_default_instruction():
    value = {"id": "", "systemPrompt": "No instruction configured for this agent.", "guidelines": []}
    assert compose_instruction(value) == "No instruction configured for this agent."


def test_compose_string_passthrough():
    text = "Merged\n\n## Guidelines\n1. x"
    assert compose_instruction(text) == text
    assert compose_instruction(None) == ""


@pytest.mark.parametrize(("value", "named"), [
    (42, "instruction"),
    ({"systemPrompt": 7}, "instruction.systemPrompt"),
    ({"systemPrompt": "p", "guidelines": "be nice"}, "instruction.guidelines"),
    ({"systemPrompt": "p", "guidelines": [1]}, "instruction.guidelines"),
])
def test_compose_rejects_wrong_types(value, named):
    with pytest.raises(WireError, match=f"^{named}"):
        compose_instruction(value)


# -- expiry --------------------------------------------------------------------------------------

def test_jwt_expiry_reads_exp():
    assert jwt_expiry(make_jwt({"exp": 1_800_000_000})) == 1_800_000_000.0


@pytest.mark.parametrize("token", ["opaque", "a.b.c", make_jwt({"iat": 1}), make_jwt({"exp": "soon"}),
                                   make_jwt({"exp": True})])
def test_jwt_expiry_unknown(token):
    assert jwt_expiry(token) is None


def test_expires_in_earlier_than_jwt_exp_wins():
    token = make_jwt({"exp": NOW + 86400})
    config = parse_connect_response({"accessToken": token, "expiresIn": 3600}, now=NOW)
    assert config.expires_at == NOW + 3600


def test_jwt_exp_earlier_than_expires_in_wins():
    token = make_jwt({"exp": NOW + 600})
    config = parse_connect_response({"accessToken": token, "expiresIn": 86400}, now=NOW)
    assert config.expires_at == NOW + 600


def test_expires_in_alone_and_as_string():
    assert parse_connect_response({"accessToken": "opaque", "expiresIn": "7200"}, now=NOW).expires_at == NOW + 7200


def test_expires_in_zero_means_unknown_unless_jwt():
    assert parse_connect_response({"accessToken": "", "expiresIn": 0}, now=NOW).expires_at is None
    token = make_jwt({"exp": NOW + 5})
    assert parse_connect_response({"accessToken": token, "expiresIn": 0}, now=NOW).expires_at == NOW + 5


def test_v1_token_exp_used():
    token = make_jwt({"exp": NOW + 86400})
    assert parse_connect_response({"token": token, "instruction": "x"}, now=NOW).expires_at == NOW + 86400


# -- mcp -----------------------------------------------------------------------------------------

def test_v2_mcp_endpoint_becomes_builtin_server():
    config = parse_connect_response({"accessToken": "t0k3n", "mcpEndpoint": "http://127.0.0.1:3305/mcp",
                                     "tools": [], "instruction": "x"})
    assert config.mcp_servers == {
        "Builtin": {"type": "http", "url": "http://127.0.0.1:3305/mcp", "headers": {"Authorization": "Bearer"}}
    }


def test_v3_mcp_servers_kept_as_sent():
    servers = {"Builtin": {"type": "http", "url": "http://127.0.0.1:3305/mcp",
                           "headers": {"Authorization": "Bearer t0k3n"}}}
    config = parse_connect_response({"accessToken": "t0k3n", "mcpServers": servers,
                                     "mcpEndpoint": "http://127.0.0.1:9/other"})
    assert config.mcp_servers == servers


# -- channels and ids ----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (["111", "222"], ("111", "222")),
    ("111,222", ("111", "222")),
    (" 111 , 222 ,", ("111", "222")),
    ([111, "222"], ("111", "222")),
    (-1001234567890, ("-1001234567890",)),
    ("-1001234567890", ("-1001234567890",)),
    (1234567890123456789, ("1234567890123456789",)),
    ("", ()),
    (None, ()),
    ([], ()),
])
def test_split_ids(value, expected):
    assert split_ids(value, "k") == expected


@pytest.mark.parametrize("value", [{"a": 1}, True, [True], [1.5], [None]])
def test_split_ids_rejects(value):
    with pytest.raises(WireError, match=r"^k:"):
        split_ids(value, "k")


def test_channels_parsing():
    body = {"accessToken": "t", "instruction": {"id": "", "systemPrompt": "p"}, "channels": [
        {"platform": "Discord", "label": "main", "enabled": True, "token": "dtok", "botId": 42,
         "channelId": ["111", 222], "requireMentions": False, "verboseLogging": True},
        {"platform": "telegram", "enabled": False, "token": "ttok", "channelId": "-100123,-100456"},
        {"platform": "telegram", "token": "ttok2", "channelId": -100789},
    ]}
    d, t1, t2 = parse_connect_response(body).channels
    assert (d.platform, d.enabled, d.token, d.channel_ids, d.require_mentions, d.bot_id, d.label) == (
        "discord", True, "dtok", ("111", "222"), False, "42", "main")
    assert (t1.enabled, t1.channel_ids, t1.require_mentions) == (False, ("-100123", "-100456"), None)
    assert (t2.enabled, t2.channel_ids) == (True, ("-100789",))


@pytest.mark.parametrize(("channels", "named"), [
    ({"platform": "discord"}, "channels"),
    (["discord"], "channels[0]"),
    ([{"platform": "slack", "token": "x"}], "channels[0].platform"),
    ([{"platform": "discord", "token": "x", "channelId": {"id": 1}}], "channels[0].channelId"),
])
def test_channels_wrong_types(channels, named):
    with pytest.raises(WireError, match="^" + re.escape(named)):
        parse_connect_response({"accessToken": "t", "channels": channels})


# -- fingerprint ---------------------------------------------------------------------------------

def v5(token: str = "tok-A") -> dict[str, Any]:
    return {
        "accessToken": token, "expiresIn": 86400, "id": "a" * 24, "name": "Ada",
        "instruction": {"id": "i", "systemPrompt": "You are Ada."},
        "tools": ["SearchMemory"], "allowedFunctions": [], "framework": "claude-agent-sdk",
        "mcpServers": {"Builtin": {"type": "http", "url": "http://127.0.0.1:3305/mcp",
                                   "headers": {"Authorization": f"Bearer {token}"}}},
        "settings": {"claude_model": "claude-haiku-4-5", "discord": {"channelIds": ["1"]}},
        "channels": [{"platform": "discord", "enabled": True, "token": "d", "channelId": "1"}],
    }


def test_fingerprint_ignores_token_and_expiry():
    a = parse_connect_response(v5("tok-A"), now=NOW)
    b = parse_connect_response(v5("tok-B"), now=NOW + 3600)
    assert a.token != b.token
    assert a.fingerprint() == b.fingerprint()


def _changed(path: list[Any], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(v5())
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize(("path", "value"), [
    (["instruction", "systemPrompt"], "You are Bob."),
    (["tools"], ["SearchMemory", "WriteMemory"]),
    (["allowedFunctions"], ["mcp__Builtin__SearchMemory"]),
    (["settings", "claude_model"], "claude-sonnet-4-5"),
    (["settings", "discord", "channelIds"], ["1", "2"]),
    (["mcpServers", "Builtin", "url"], "http://127.0.0.1:3306/mcp"),
    (["channels", 0, "enabled"], False),
    (["name"], "Bob"),
])
def test_fingerprint_changes_with_configuration(path, value):
    base = parse_connect_response(v5()).fingerprint()
    assert parse_connect_response(_changed(path, value)).fingerprint() != base


def test_fingerprint_insensitive_to_key_order():
    body = v5()
    body["settings"] = {"discord": {"channelIds": ["1"]}, "claude_model": "claude-haiku-4-5"}
    assert parse_connect_response(body).fingerprint() == parse_connect_response(v5()).fingerprint()


# -- version detection ---------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "version"), [
    ({"token": "t", "instruction": "x", "tools": [], "agent": {}}, "v1"),
    ({"accessToken": "t", "expiresIn": 86400, "mcpEndpoint": "u", "instruction": "x", "tools": []}, "v2"),
    ({"accessToken": "t", "expiresIn": 86400, "instruction": "x", "mcpServers": {}}, "v3"),
    ({"accessToken": "t", "instruction": {"id": "", "systemPrompt": "p", "guidelines": []}, "mcpServers": {}}, "v4"),
    ({"accessToken": "t", "instruction": {"id": "", "systemPrompt": "p", "guidelines": []}}, "v4"),
    ({"accessToken": "t", "instruction": {"id": "", "systemPrompt": "p"}, "channels": []}, "v5"),
    ({"accessToken": "t", "instruction": {"id": "", "systemPrompt": "p"}, "allowedFunctions": []}, "v5"),
    ({"accessToken": "t", "instruction": {"id": "", "systemPrompt": "p"}, "framework": "x"}, "v5"),
])
def test_detect_version(body, version):
    assert detect_version(body) == version
    assert parse_connect_response(body).wire_version == version


def test_parse_rejects_non_object():
    with pytest.raises(WireError, match=r"^response"):
        parse_connect_response(["not", "an", "object"])


def test_agent_fields_top_level_beat_agent_object():
    config = parse_connect_response({"accessToken": "t", "id": "top", "name": "Top",
                                     "agent": {"id": "inner", "name": "Inner", "orgId": "org"}})
    assert (config.agent_id, config.agent_name, config.org_id) == ("top", "Top", "org")


# -- token lifetime: measured from receipt, robust to a VM clock that is off --------------------------------


def test_lifetime_from_expires_in() -> None:
    assert parse_connect_response({"accessToken": "opaque", "expiresIn": 3600}, now=1000.0).lifetime == 3600


def test_lifetime_from_jwt_exp_minus_iat_when_the_clocks_disagree() -> None:
    # The VM's clock is a day ahead: exp is in the past by our clock, but the token is good for an hour.
    token = make_jwt({"iat": 1_000_000, "exp": 1_003_600})
    config = parse_connect_response({"accessToken": token}, now=1_000_000 + 86400)
    assert config.lifetime == 3600


def test_lifetime_trusts_exp_minus_now_when_the_clocks_agree() -> None:
    # iat is whole seconds: 0.9 s of the token's life is already gone when we receive it.
    token = make_jwt({"iat": 1000, "exp": 1003})
    assert parse_connect_response({"accessToken": token}, now=1000.9).lifetime == pytest.approx(2.1)


def test_lifetime_is_the_shorter_of_expires_in_and_the_jwt() -> None:
    token = make_jwt({"iat": 1000, "exp": 1000 + 7200})
    assert parse_connect_response({"accessToken": token, "expiresIn": 3600}, now=1000).lifetime == 3600
    assert parse_connect_response({"accessToken": token, "expiresIn": 9000}, now=1000).lifetime == 7200


def test_lifetime_unknown_without_expires_in_or_iat() -> None:
    assert parse_connect_response({"accessToken": make_jwt({"exp": 5000})}, now=1000).lifetime is None
