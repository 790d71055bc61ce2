"""Access rules decided in the snapshot: the fail-closed tool list and its store, where the agent JWT goes,
the deployment endpoint's scheme and credential, and the warnings an operator gets."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path
from typing import Any

from aiwm_agentd.config import AgentConfig, PlatformConfig, build_agent_config, load_daemon_settings
from aiwm_agentd.config.snapshot import mcp_with_token
from aiwm_agentd.config.toolstore import load_tools, save_tools, store_path
from aiwm_agentd.controller.wire import parse_connect_response
from aiwm_agentd.platforms.addressing import Inbound, is_admin, should_answer
from aiwm_agentd.platforms.commands import format_status
from aiwm_agentd.runner.options import plan_tools

AGENT = "65a1b2c3d4e5f60718293a4b"
CONTROLLER = "https://aiwm.example.test:8443"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXZhbHVl"


def env_for(state: Path, **extra: str) -> dict[str, str]:
    return {"AIWM_BASE_URL": CONTROLLER, "AIWM_AGENT_ID": AGENT, "AIWM_AGENT_SECRET": "agent-secret-0a1b",
            "AIWM_STATE_DIR": str(state), **extra}


def connect(**body: Any) -> Any:
    return parse_connect_response({"accessToken": JWT, "expiresIn": 86400, "instruction": "x", **body})


def build(state: Path, controller: Any = None, **env: str) -> AgentConfig:
    full = env_for(state, **env)
    return build_agent_config(full, controller, load_daemon_settings(full))


# -- the tool whitelist fails closed --------------------------------------------------------------


def test_local_mode_without_a_list_has_no_tools(tmp_path: Path) -> None:
    cfg = build(tmp_path, AIWM_ENABLED="false")
    assert cfg.claude.tool_names == ()
    plan = plan_tools(cfg.claude)
    assert plan.restricted and plan.builtins == () and not plan.allows("Bash")


def test_local_mode_uses_claude_allowed_tools(tmp_path: Path) -> None:
    cfg = build(tmp_path, AIWM_ENABLED="false", CLAUDE_ALLOWED_TOOLS="Read, Grep")
    assert cfg.claude.tool_names == ("Read", "Grep")
    assert plan_tools(cfg.claude).builtins == ("Read", "Grep")


def test_controller_list_is_kept_without_tokens_and_used_in_fallback(tmp_path: Path) -> None:
    servers = {"Builtin": {"type": "http", "url": f"{CONTROLLER}/mcp", "headers": {"Authorization": "Bearer"}}}
    cfg = build(tmp_path, connect(tools=[{"name": "Read"}, {"name": "SearchMemory"}], mcpServers=servers),
                CLAUDE_ALLOWED_TOOLS="Bash")
    assert cfg.claude.tool_names == ("Read", "SearchMemory")
    path = store_path(tmp_path)
    text = path.read_text()
    assert JWT not in text and "Authorization" not in text and "agent-secret" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fallback = build(tmp_path, None, CLAUDE_ALLOWED_TOOLS="Bash")  # controller enabled, not reachable
    assert fallback.claude.tool_names == ("Read", "SearchMemory")
    assert plan_tools(fallback.claude).builtins == ("Read",)
    local = build(tmp_path, None, AIWM_ENABLED="false", CLAUDE_ALLOWED_TOOLS="Bash")
    assert local.claude.tool_names == ("Bash",)  # local mode: the env file decides, not an old controller


def test_fallback_without_a_kept_list_uses_the_env_list_else_nothing(tmp_path: Path) -> None:
    assert build(tmp_path, None, CLAUDE_ALLOWED_TOOLS="Glob").claude.tool_names == ("Glob",)
    assert build(tmp_path, None).claude.tool_names == ()


def test_a_broken_store_is_ignored(tmp_path: Path) -> None:
    store_path(tmp_path).write_text("{not json")
    assert load_tools(tmp_path) is None
    assert build(tmp_path, None).claude.tool_names == ()


def test_store_is_written_only_on_change_and_never_creates_the_state_dir(tmp_path: Path) -> None:
    assert save_tools(tmp_path, ("Read",), (), clock=lambda: 1.0)
    assert not save_tools(tmp_path, ("Read",), (), clock=lambda: 2.0)
    assert load_tools(tmp_path) == load_tools(tmp_path) and load_tools(tmp_path).saved_at == 1.0  # type: ignore[union-attr]
    assert save_tools(tmp_path, None, ("mcp__Builtin",), clock=lambda: 3.0)
    stored = load_tools(tmp_path)
    assert stored is not None and stored.tools is None and stored.allowed_functions == ("mcp__Builtin",)
    missing = tmp_path / "nope"
    assert not save_tools(missing, ("Read",), ()) and not missing.exists()


# -- the agent JWT only where it belongs ----------------------------------------------------------


def test_jwt_goes_only_to_the_controllers_own_servers() -> None:
    servers = {
        "Builtin": {"type": "http", "url": "https://elsewhere.test/mcp", "headers": {"Authorization": "Bearer"}},
        "Same": {"type": "http", "url": f"{CONTROLLER}/other-mcp",
                 "headers": {"authorization": "Bearer <USER_ACCESS_TOKEN>"}},
        "ThirdOwn": {"type": "http", "url": "https://third.test/mcp",
                     "headers": {"Authorization": "Bearer third-party-key-123", "X-Trace": "1"}},
        "ThirdPlaceholder": {"type": "http", "url": "https://third.test/mcp",
                             "headers": {"Authorization": "Bearer <USER_ACCESS_TOKEN>"}},
        "OtherPort": {"type": "http", "url": "https://aiwm.example.test/mcp", "headers": {"Authorization": "Bearer"}},
    }
    warnings: list[str] = []
    result = mcp_with_token(servers, JWT, CONTROLLER, warnings)
    assert result["Builtin"]["headers"] == {"Authorization": f"Bearer {JWT}"}
    assert result["Same"]["headers"] == {"Authorization": f"Bearer {JWT}"}
    assert result["ThirdOwn"]["headers"] == {"Authorization": "Bearer third-party-key-123", "X-Trace": "1"}
    assert result["ThirdPlaceholder"]["headers"] == {}
    assert result["OtherPort"]["headers"] == {}  # another port is another origin
    assert JWT not in json.dumps({k: v for k, v in result.items() if k not in ("Builtin", "Same")})
    assert any("ThirdPlaceholder" in w for w in warnings) and any("OtherPort" in w for w in warnings)


def test_jwt_placement_in_the_snapshot(tmp_path: Path) -> None:
    servers = {"Builtin": {"type": "http", "url": f"{CONTROLLER}/mcp", "headers": {"Authorization": "Bearer"}},
               "Search": {"type": "http", "url": "https://search.test/mcp", "headers": {"Authorization": "Bearer"}}}
    cfg = build(tmp_path, connect(mcpServers=servers))
    assert cfg.claude.mcp_servers["Builtin"]["headers"]["Authorization"] == f"Bearer {JWT}"
    assert "Authorization" not in cfg.claude.mcp_servers["Search"]["headers"]
    assert any("mcpServers.Search" in w for w in cfg.warnings)


# -- deployment.baseAPIEndpoint ------------------------------------------------------------------


def test_plain_http_deployment_endpoint_is_ignored_with_a_warning_naming_it(tmp_path: Path) -> None:
    body = {"deployment": {"baseAPIEndpoint": "http://user:pw-secret-77@proxy.example.test/v1"},
            "settings": {"claude_oauthToken": "ctl-oauth-abcdef"}}
    cfg = build(tmp_path, connect(**body), ANTHROPIC_BASE_URL="https://local-proxy.test",
                ANTHROPIC_API_KEY="sk-local-123456")
    assert cfg.claude.base_url == "https://local-proxy.test"
    assert cfg.claude.api_key == "sk-local-123456"  # the local setup stays as it was
    [warning] = [w for w in cfg.warnings if "baseAPIEndpoint" in w]
    assert "proxy.example.test" in warning and "not https" in warning and "pw-secret-77" not in warning


def test_https_and_loopback_endpoints_get_the_controllers_credential_never_the_local_key(tmp_path: Path) -> None:
    for url in ("https://proxy.example.test/v1", "http://127.0.0.1:3400/proxy"):
        body = {"deployment": {"baseAPIEndpoint": url}, "settings": {"claudeOAuthToken": "ctl-oauth-abcdef"}}
        cfg = build(tmp_path, connect(**body), ANTHROPIC_API_KEY="sk-local-123456")
        assert (cfg.claude.base_url, cfg.claude.api_key, cfg.claude.oauth_token) == (url, "", "ctl-oauth-abcdef")
        [p] = [p for p in cfg.provenance if p.key == "claude.api_key"]
        assert "sk-local" not in p.shown and "not sent" in p.origin


def test_endpoint_without_a_controller_credential_is_ignored(tmp_path: Path) -> None:
    body = {"deployment": {"baseAPIEndpoint": "https://proxy.example.test/v1"}}
    cfg = build(tmp_path, connect(**body), ANTHROPIC_API_KEY="sk-local-123456",
                CLAUDE_CODE_OAUTH_TOKEN="local-oauth-999999")
    assert cfg.claude.base_url == "" and cfg.claude.api_key == "sk-local-123456"
    assert any("no credential" in w for w in cfg.warnings)


# -- who may talk ---------------------------------------------------------------------------------


def test_user_lists_from_env_and_controller(tmp_path: Path) -> None:
    cfg = build(tmp_path, connect(settings={"telegram": {"allowedUserIds": [5, 6], "adminUserIds": "6"},
                                            "discord_allowedUserIds": "7,8"}),
                TELEGRAM_ALLOWED_USER_IDS="1", DISCORD_ADMIN_USER_IDS="9")
    assert cfg.telegram.allowed_user_ids == ("5", "6") and cfg.telegram.admin_user_ids == ("6",)
    assert cfg.discord.allowed_user_ids == ("7", "8") and cfg.discord.admin_user_ids == ("9",)


def test_operator_warnings_for_dms_without_a_list_and_tools_for_whole_groups(tmp_path: Path) -> None:
    cfg = build(tmp_path, AIWM_ENABLED="false", TELEGRAM_BOT_TOKEN="1:tok-abcdef", TELEGRAM_GROUP_ID="-100",
                TELEGRAM_ALLOW_DMS="true", CLAUDE_ALLOWED_TOOLS="Bash,Grep")
    assert any("TELEGRAM_ALLOW_DMS" in w and "TELEGRAM_ALLOWED_USER_IDS" in w for w in cfg.warnings)
    assert any("every member" in w and "Bash" in w and "Grep" not in w for w in cfg.warnings)
    listed = build(tmp_path, AIWM_ENABLED="false", TELEGRAM_BOT_TOKEN="1:tok-abcdef", TELEGRAM_GROUP_ID="-100",
                   TELEGRAM_ALLOW_DMS="true", CLAUDE_ALLOWED_TOOLS="Bash", TELEGRAM_ALLOWED_USER_IDS="5")
    assert listed.warnings == ()


PLATFORM = PlatformConfig(platform="telegram", enabled=True, token="t" * 20, target_ids=("-100",), bot_id="",
                          require_mentions=False, allow_direct_messages=True, api_base_url="")


def inbound(author: str, direct: bool = False) -> Inbound:
    return Inbound(author_is_bot=False, is_direct=direct, chat_ids=("5" if direct else "-100",), mentioned=True,
                   replied_to_bot=False, author_id=author)


def test_addressing_by_user() -> None:
    open_group = PLATFORM
    assert should_answer(inbound("1"), open_group)  # no list: every group member
    assert not should_answer(inbound("1", direct=True), open_group)  # ... but no DM
    listed = dataclasses.replace(PLATFORM, allowed_user_ids=("1",), admin_user_ids=("2",))
    assert should_answer(inbound("1"), listed) and should_answer(inbound("1", direct=True), listed)
    assert should_answer(inbound("2"), listed) and should_answer(inbound("2", direct=True), listed)
    assert not should_answer(inbound("3"), listed) and not should_answer(inbound("3", direct=True), listed)
    assert not should_answer(inbound(""), listed)
    no_dms = dataclasses.replace(listed, allow_direct_messages=False)
    assert not should_answer(inbound("1", direct=True), no_dms)
    assert is_admin("2", listed) and not is_admin("1", listed) and not is_admin("", listed)


def test_short_status_for_non_admins() -> None:
    summary = {"agent": "a", "agent_id": AGENT, "state": "connected", "controller": CONTROLLER, "model": "m"}
    short = format_status(summary, 0, False, admin=False)
    assert AGENT not in short and CONTROLLER not in short and "agent: a" in short and "state: connected" in short
    full = format_status(summary, 0, False, admin=True)
    assert AGENT in full and CONTROLLER in full


def test_store_is_left_to_the_owner_of_the_state_dir(tmp_path: Path, monkeypatch: Any) -> None:
    import os

    monkeypatch.setattr(os, "geteuid", lambda: tmp_path.stat().st_uid + 1)  # e.g. root running check-config
    assert not save_tools(tmp_path, ("Read",), ())
    assert not store_path(tmp_path).exists()
