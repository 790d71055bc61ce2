"""Daemon settings from the env, and the layered agent configuration with provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd import config as config_mod
from aiwm_agentd import logs
from aiwm_agentd.config import (
    DEFAULT_HEALTH_ADDR,
    DEFAULT_MODEL,
    DEFAULT_STATE_DIR,
    AgentConfig,
    ConfigError,
    build_agent_config,
    describe_changes,
    load_daemon_settings,
    read_env_file,
)
from aiwm_agentd.controller.wire import ControllerConfig, parse_connect_response

AGENT = "65a1b2c3d4e5f60718293a4b"
SECRET = "agent-Secret-9f8e7d6c"
BASE_ENV = {"AIWM_BASE_URL": "http://127.0.0.1:3305", "AIWM_AGENT_ID": AGENT, "AIWM_AGENT_SECRET": SECRET}


def daemon(**env: str):
    return load_daemon_settings({**BASE_ENV, **env})


def controller(settings: dict[str, Any] | None = None, **body: Any) -> ControllerConfig:
    payload: dict[str, Any] = {
        "accessToken": "tok-1", "expiresIn": 86400, "instruction": "Be helpful.", "settings": settings or {},
    }
    payload.update(body)
    return parse_connect_response(payload)


def build(settings: dict[str, Any] | None = None, env: dict[str, str] | None = None, local: bool = False,
          **body: Any) -> AgentConfig:
    full_env = {**BASE_ENV, **(env or {})}
    ctl = None if local else controller(settings, **body)
    return build_agent_config(full_env, ctl, load_daemon_settings(full_env))


def origin(cfg: AgentConfig, key: str) -> str:
    [p] = [p for p in cfg.provenance if p.key == key]
    return p.origin


def value(cfg: AgentConfig, key: str) -> Any:
    section, attr = key.split(".")
    return getattr(getattr(cfg, section), attr)


def _set_path(target: dict[str, Any], path: str, val: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = val


# -- precedence: flat > nested > env > default ---------------------------------------------------

# key, flat key, flat value, nested path, nested value, env key, env value, expected: flat, nested, env, default
FAMILIES = [
    ("claude.model", "claude_model", "flat-model", "claudeModel", "nested-model", "CLAUDE_MODEL", "env-model",
     ("flat-model", "nested-model", "env-model", DEFAULT_MODEL)),
    ("claude.max_turns", "claude_maxTurns", "11", "maxTurns", 22, "CLAUDE_MAX_TURNS", "33", (11, 22, 33, 100)),
    ("claude.permission_mode", "claude_permissionMode", "plan", "permissionMode", "acceptEdits",
     "CLAUDE_PERMISSION_MODE", "dontAsk", ("plan", "acceptEdits", "dontAsk", "default")),
    ("claude.resume", "claude_resume", False, "resume", True, "CLAUDE_RESUME", "false", (False, True, False, True)),
    ("claude.oauth_token", "claude_oauthToken", "flat-oauth-1", "claudeOAuthToken", "nested-oauth-2",
     "CLAUDE_CODE_OAUTH_TOKEN", "env-oauth-3", ("flat-oauth-1", "nested-oauth-2", "env-oauth-3", "")),
    ("discord.token", "discord_token", "flat-dtok-1", "discord.token", "nested-dtok-2", "DISCORD_TOKEN",
     "env-dtok-3", ("flat-dtok-1", "nested-dtok-2", "env-dtok-3", "")),
    ("discord.target_ids", "discord_channelIds", "111,222", "discord.channelIds", ["333"], "DISCORD_CHANNEL_ID",
     "444, 555", (("111", "222"), ("333",), ("444", "555"), ())),
    ("discord.bot_id", "discord_botId", "b1", "discord.botId", 22, "DISCORD_BOT_ID", "b3", ("b1", "22", "b3", "")),
    ("telegram.token", "telegram_token", "flat-ttok-1", "telegram.token", "nested-ttok-2", "TELEGRAM_BOT_TOKEN",
     "env-ttok-3", ("flat-ttok-1", "nested-ttok-2", "env-ttok-3", "")),
    ("telegram.target_ids", "telegram_groupIds", [-1001, "-1002"], "telegram.groupIds", "-1003",
     "TELEGRAM_GROUP_ID", "-1004", (("-1001", "-1002"), ("-1003",), ("-1004",), ())),
    ("telegram.bot_id", "telegram_botUsername", "flat_bot", "telegram.botUsername", "nested_bot",
     "TELEGRAM_BOT_USERNAME", "env_bot", ("flat_bot", "nested_bot", "env_bot", "")),
]


@pytest.mark.parametrize("row", FAMILIES, ids=[r[0] for r in FAMILIES])
def test_precedence_flat_nested_env_default(row):
    key, flat, flat_v, nested, nested_v, env_key, env_v, expected = row
    settings: dict[str, Any] = {flat: flat_v}
    _set_path(settings, nested, nested_v)
    env = {env_key: env_v}

    cfg = build(settings, env)
    assert value(cfg, key) == expected[0]
    assert origin(cfg, key) == f"controller (settings.{flat})"

    del settings[flat]
    cfg = build(settings, env)
    assert value(cfg, key) == expected[1]
    assert origin(cfg, key) == f"controller (settings.{nested})"

    cfg = build({}, env)
    assert value(cfg, key) == expected[2]
    assert origin(cfg, key) == f"env ({env_key})"

    cfg = build({}, {})
    assert value(cfg, key) == expected[3]
    assert origin(cfg, key) == "default"

    cfg = build(None, env, local=True)
    assert value(cfg, key) == expected[2]


def test_max_concurrency_and_idle_timeout_layers():
    cfg = build({"assistant_maxConcurrency": "3", "assistant_idleTimeoutMs": "60000"},
                {"CLAUDE_MAX_CONCURRENCY": "5", "CLAUDE_IDLE_TIMEOUT": "30"})
    assert (cfg.claude.max_concurrency, cfg.claude.idle_timeout) == (3, 60.0)
    cfg = build({}, {"CLAUDE_MAX_CONCURRENCY": "5", "CLAUDE_IDLE_TIMEOUT": "30"})
    assert (cfg.claude.max_concurrency, cfg.claude.idle_timeout) == (5, 30.0)
    cfg = build({})
    assert (cfg.claude.max_concurrency, cfg.claude.idle_timeout) == (2, 90.0)


def test_numbers_as_strings():
    cfg = build({"claude_maxTurns": "100", "claude_resume": "false", "assistant_maxConcurrency": " 4 "})
    assert cfg.claude.max_turns == 100
    assert cfg.claude.resume is False
    assert cfg.claude.max_concurrency == 4
    assert cfg.warnings == ()


def test_deployment_base_url_beats_env_and_gets_the_controllers_credential_only():
    deployment = {"id": "d", "baseAPIEndpoint": "http://127.0.0.1:3400/proxy"}
    env = {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9999", "ANTHROPIC_API_KEY": "sk-local-key-123456"}
    cfg = build({"claude_oauthToken": "ctl-oauth-abcdef"}, env, deployment=deployment)
    assert cfg.claude.base_url == "http://127.0.0.1:3400/proxy"
    assert cfg.claude.oauth_token == "ctl-oauth-abcdef"
    assert cfg.claude.api_key == ""  # the local key never goes to the controller's endpoint
    assert build({}, env).claude.base_url == "http://127.0.0.1:9999"


# -- v5 channels ---------------------------------------------------------------------------------

def channel(**kw: Any) -> dict[str, Any]:
    return {"platform": "discord", "enabled": True, "token": "chan-dtok", "channelId": "777,888",
            "botId": "99", "requireMentions": False, **kw}


def test_v5_channel_beats_flat_keys():
    settings = {"discord_token": "flat-dtok", "discord_channelIds": ["111"], "discord_botId": "b1"}
    cfg = build(settings, channels=[channel()])
    assert cfg.discord.token == "chan-dtok"
    assert cfg.discord.target_ids == ("777", "888")
    assert cfg.discord.bot_id == "99"
    assert cfg.discord.require_mentions is False
    assert cfg.discord.enabled
    assert origin(cfg, "discord.token") == "controller (channels[0].token)"


def test_v5_channel_without_token_falls_through():
    cfg = build({"discord_token": "flat-dtok"}, channels=[channel(token="", channelId="")])
    assert cfg.discord.token == "flat-dtok"
    assert cfg.discord.target_ids == ()


def test_disabled_channel_disables_platform_despite_env_token():
    cfg = build({}, {"DISCORD_TOKEN": "env-dtok-abc"}, channels=[channel(enabled=False, token="")])
    assert cfg.discord.token == "env-dtok-abc"
    assert cfg.discord.enabled is False
    assert build({}, {"DISCORD_TOKEN": "env-dtok-abc"}).discord.enabled is True


def test_first_enabled_channel_is_used_with_warning():
    cfg = build({}, channels=[channel(enabled=False, token="off-tok"), channel(token="on-tok"),
                              {"platform": "telegram", "enabled": True, "token": "t-tok", "channelId": -100}])
    assert cfg.discord.token == "on-tok"
    assert cfg.discord.enabled
    assert cfg.telegram.target_ids == ("-100",)
    assert any("2 discord entries" in w for w in cfg.warnings)


def test_no_token_means_platform_disabled():
    cfg = build({})
    assert not cfg.discord.enabled and not cfg.telegram.enabled


# -- invalid values ------------------------------------------------------------------------------

def test_invalid_controller_values_warn_and_fall_through():
    settings = {"claude_maxTurns": "many", "maxTurns": 7, "claude_permissionMode": "yolo",
                "discord_channelIds": {"a": 1}, "assistant_idleTimeoutMs": "-5", "claude_resume": "perhaps"}
    cfg = build(settings, {"CLAUDE_PERMISSION_MODE": "plan", "DISCORD_CHANNEL_ID": "5"})
    assert cfg.claude.max_turns == 7
    assert cfg.claude.permission_mode == "plan"
    assert cfg.discord.target_ids == ("5",)
    assert cfg.claude.idle_timeout == 90.0
    assert cfg.claude.resume is True
    text = "\n".join(cfg.warnings)
    for name in ("settings.claude_maxTurns", "settings.claude_permissionMode", "settings.discord_channelIds",
                 "settings.assistant_idleTimeoutMs", "settings.claude_resume"):
        assert name in text
    assert "'many'" in text


def test_invalid_controller_secret_value_hidden_in_warning():
    cfg = build({"discord_token": ["leaky-token-value"], "claude_oauthToken": {"t": "leaky-oauth"}},
                {"DISCORD_TOKEN": "env-dtok-xyz"})
    assert cfg.discord.token == "env-dtok-xyz"
    text = "\n".join(cfg.warnings)
    assert "settings.discord_token" in text and "settings.claude_oauthToken" in text
    assert "leaky" not in text
    assert "(value hidden)" in text


@pytest.mark.parametrize(("key", "bad", "expected"), [
    ("CLAUDE_MAX_TURNS", "abc", "positive whole number"),
    ("CLAUDE_MAX_TURNS", "0", "positive whole number"),
    ("CLAUDE_PERMISSION_MODE", "yolo", "one of default, acceptEdits"),
    ("CLAUDE_RESUME", "maybe", "true or false"),
    ("CLAUDE_MAX_CONCURRENCY", "-1", "positive whole number"),
    ("CLAUDE_IDLE_TIMEOUT", "soon", "number of seconds"),
    ("CLAUDE_TURN_TIMEOUT", "0", "positive number of seconds"),
    ("ANTHROPIC_BASE_URL", "ftp://127.0.0.1", "http:// or https:// URL"),
    ("DISCORD_GATEWAY_URL", "http://127.0.0.1:1", "ws:// or wss:// URL"),
    ("DISCORD_REQUIRE_MENTION", "sometimes", "true or false"),
    ("TELEGRAM_API_BASE_URL", "127.0.0.1", "http:// or https:// URL"),
])
def test_invalid_env_value_raises_config_error(key, bad, expected):
    env = {key: bad, "DISCORD_TOKEN": "dtok-secret-1", "CLAUDE_CODE_OAUTH_TOKEN": "oauth-secret-2"}
    with pytest.raises(ConfigError) as info:
        build(None, env, local=True)
    text = str(info.value)
    assert text.startswith(f"{key}: expected")
    assert expected in text
    assert info.value.key == key
    for secret in (SECRET, "dtok-secret-1", "oauth-secret-2"):
        assert secret not in text


def test_invalid_env_value_not_fatal_when_controller_supplies_it():
    cfg = build({"claude_maxTurns": 5}, {"CLAUDE_MAX_TURNS": "abc"})
    assert cfg.claude.max_turns == 5


def test_config_error_hides_secret_values():
    err = ConfigError("DISCORD_TOKEN", "a string", "very-secret-token", secret=True)
    assert "very-secret-token" not in str(err)
    assert "value hidden" in str(err)


@pytest.mark.parametrize(("key", "bad", "expected"), [
    ("AIWM_ENABLED", "maybe", "true or false"),
    ("AIWM_ALLOW_INSECURE_HTTP", "sure", "true or false"),
    ("AIWM_HEARTBEAT_INTERVAL", "-1", "positive number of seconds"),
    ("AIWM_HEARTBEAT_INTERVAL", "abc", "number of seconds"),
    ("AIWM_RECONNECT_INTERVAL", "inf", "positive number of seconds"),
    ("AIWM_FALLBACK_RETRY_INTERVAL", "nan", "positive number of seconds"),
    ("AIWM_REQUEST_TIMEOUT", "0", "positive number of seconds"),
    ("AIWM_CONNECT_RETRIES", "1.5", "positive whole number"),
    ("AIWM_SHUTDOWN_TIMEOUT", "x", "number of seconds"),
    ("AIWM_CA_BUNDLE", "/nonexistent/ca.pem", "readable PEM file"),
    ("LOG_LEVEL", "LOUD", "one of DEBUG, INFO"),
    ("AIWM_HEALTH_ADDR", "nowhere", "HOST:PORT"),
    ("AIWM_BASE_URL", "ftp://127.0.0.1", "http:// or https:// URL"),
    ("AIWM_BASE_URL", "", "controller URL"),
    ("AIWM_AGENT_SECRET", "", "agent secret"),
])
def test_invalid_daemon_settings(key, bad, expected):
    with pytest.raises(ConfigError) as info:
        daemon(**{key: bad})
    text = str(info.value)
    assert text.startswith(f"{key}: expected")
    assert expected in text
    assert SECRET not in text


@pytest.mark.parametrize("agent_id", ["65a1b2c3d4e5f60718293a4", "65a1b2c3d4e5f60718293a4b0", "agent-id",
                                      "65a1b2c3d4e5f60718293a4z", ""])
def test_agent_id_must_be_24_hex(agent_id):
    with pytest.raises(ConfigError) as info:
        daemon(AIWM_AGENT_ID=agent_id)
    assert str(info.value).startswith("AIWM_AGENT_ID: expected 24 hexadecimal characters")
    assert SECRET not in str(info.value)


def test_agent_id_uppercase_hex_ok():
    assert daemon(AIWM_AGENT_ID=AGENT.upper()).agent_id == AGENT.upper()


@pytest.mark.parametrize("url", ["http://192.0.2.10:3305", "http://controller.example.com"])
def test_plain_http_to_non_loopback_refused(url):
    with pytest.raises(ConfigError) as info:
        daemon(AIWM_BASE_URL=url)
    assert "AIWM_ALLOW_INSECURE_HTTP" in str(info.value)
    assert daemon(AIWM_BASE_URL=url, AIWM_ALLOW_INSECURE_HTTP="true").base_url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:3305/", "http://localhost:3305", "http://[::1]:3305",
                                 "http://127.0.0.2", "https://controller.example.com"])
def test_loopback_or_https_accepted(url):
    assert daemon(AIWM_BASE_URL=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(("raw", "expected"), [
    (None, DEFAULT_HEALTH_ADDR),
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("off", None),
    ("OFF", None),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:1", ("localhost", 1)),
])
def test_health_addr(raw, expected):
    env = {} if raw is None else {"AIWM_HEALTH_ADDR": raw}
    assert daemon(**env).health_addr == expected


@pytest.mark.parametrize("raw", ["9464", ":9464", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:"])
def test_health_addr_invalid(raw):
    with pytest.raises(ConfigError, match=r"^AIWM_HEALTH_ADDR: expected HOST:PORT"):
        daemon(AIWM_HEALTH_ADDR=raw)


def test_state_dir_defaults_and_overrides():
    assert daemon().state_dir == Path(DEFAULT_STATE_DIR)
    assert daemon(STATE_DIRECTORY="/var/lib/from-systemd:/var/lib/other").state_dir == Path("/var/lib/from-systemd")
    s = daemon(STATE_DIRECTORY="/var/lib/from-systemd", AIWM_STATE_DIR="/srv/state")
    assert s.state_dir == Path("/srv/state")
    assert s.origins["AIWM_STATE_DIR"] == "env"


def test_disabled_needs_no_controller_keys():
    s = load_daemon_settings({"AIWM_ENABLED": "false"})
    assert s.enabled is False
    assert s.base_url == "" and s.agent_id == "" and s.agent_secret == ""
    cfg = build_agent_config({"AIWM_ENABLED": "false"}, None, s)
    assert cfg.source == "local"


def test_daemon_defaults_and_origins():
    s = daemon()
    assert (s.heartbeat_interval, s.reconnect_interval, s.fallback_retry_interval) == (60.0, 82800.0, 300.0)
    assert (s.request_timeout, s.connect_retries, s.shutdown_timeout) == (10.0, 3, 15.0)
    assert s.verify is True
    assert s.origins["AIWM_HEARTBEAT_INTERVAL"] == "default"
    assert daemon(AIWM_HEARTBEAT_INTERVAL="2.5").origins["AIWM_HEARTBEAT_INTERVAL"] == "env"


def test_ca_bundle(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert daemon(AIWM_CA_BUNDLE=str(pem)).verify == str(pem)


# -- MCP, local mode -----------------------------------------------------------------------------

def test_mcp_authorization_carries_current_token():
    servers = {"Builtin": {"type": "http", "url": "http://127.0.0.1:3305/mcp",
                           "headers": {"authorization": "Bearer stale", "X-Other": "1"}},
               "Plain": {"type": "http", "url": "http://127.0.0.1:3306/mcp"}}
    cfg = build({}, accessToken="fresh-token", mcpServers=servers)
    assert cfg.claude.mcp_servers["Builtin"]["headers"] == {"X-Other": "1", "Authorization": "Bearer fresh-token"}
    assert cfg.claude.mcp_servers["Plain"] == servers["Plain"]


def test_v2_mcp_endpoint_gets_token():
    cfg = build({}, accessToken="v2-token", mcpEndpoint="http://127.0.0.1:3305/mcp")
    assert cfg.claude.mcp_servers["Builtin"]["headers"]["Authorization"] == "Bearer v2-token"


def test_local_mode_instruction_sources():
    env = {**BASE_ENV}
    s = load_daemon_settings(env)
    assert build_agent_config(env, None, s, "From file.").instruction == "From file."
    assert build_agent_config(env, None, s).instruction == config_mod.DEFAULT_INSTRUCTION
    assert build(instruction="").instruction == config_mod.DEFAULT_INSTRUCTION


# -- describe_changes ----------------------------------------------------------------------------

def test_describe_changes_names_keys_not_secrets():
    old = build({"claude_model": "m-old", "discord_token": "old-dtok-AAAA", "telegram_token": "old-ttok-1"})
    new = build({"claude_model": "m-new", "discord_token": "new-dtok-BBBB", "telegram_token": "new-ttok-22"},
                instruction="Changed.", tools=["x"])
    changes = describe_changes(old, new)
    text = "\n".join(changes)
    assert "claude.model: m-old -> m-new" in changes
    assert "discord.token: changed" in changes
    assert any(c.startswith("telegram.token:") for c in changes)
    assert any(c.startswith("instruction") for c in changes)
    assert "tools: whitelist changed" in changes
    for secret in ("old-dtok-AAAA", "new-dtok-BBBB", "old-ttok-1", "new-ttok-22", "dtok", "ttok"):
        assert secret not in text


def test_describe_changes_ignores_token_only_change():
    servers = {"Builtin": {"type": "http", "url": "http://127.0.0.1:3305/mcp", "headers": {"Authorization": "x"}}}
    old = build({"claude_model": "m"}, accessToken="token-one", mcpServers=servers)
    new = build({"claude_model": "m"}, accessToken="token-two", mcpServers=servers)
    assert describe_changes(old, new) == []
    moved = {"Builtin": {**servers["Builtin"], "url": "http://127.0.0.1:3307/mcp"}}
    assert "mcp servers changed" in describe_changes(old, build({"claude_model": "m"}, mcpServers=moved))


# -- read_env_file -------------------------------------------------------------------------------

def test_env_file_overrides_process_env(tmp_path):
    f = tmp_path / "agent.env"
    f.write_text('CLAUDE_MODEL=file-model\nAIWM_AGENT_SECRET="file-secret-xyz1"\nEMPTY=\n# comment\n')
    merged = read_env_file(str(f), {"CLAUDE_MODEL": "proc-model", "OTHER": "kept"})
    assert merged["CLAUDE_MODEL"] == "file-model"
    assert merged["OTHER"] == "kept"
    assert merged["AIWM_AGENT_SECRET"] == "file-secret-xyz1"
    assert merged["EMPTY"] == ""
    assert logs.mask("x file-secret-xyz1 y") == "x *** y"


def test_env_file_no_interpolation(tmp_path):
    f = tmp_path / "agent.env"
    f.write_text("AIWM_AGENT_SECRET=abc$HOME${USER}\n")
    assert read_env_file(str(f), {"HOME": "/root"})["AIWM_AGENT_SECRET"] == "abc$HOME${USER}"


def test_missing_explicit_env_file_is_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_env_file(str(tmp_path / "missing.env"), {})
    assert info.value.key == "--env-file"
    assert "missing.env" in str(info.value)


def test_missing_default_env_file_is_fine(tmp_path, monkeypatch):
    default = str(tmp_path / "etc" / "agent.env")
    monkeypatch.setattr(config_mod, "DEFAULT_ENV_FILE", default)
    assert read_env_file(default, {"A": "1"}) == {"A": "1"}
    assert read_env_file(None, {"A": "1"}) == {"A": "1"}
