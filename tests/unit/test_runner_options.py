"""ClaudeConfig -> tool plan, child environment, SDK options (no CLI involved)."""

from __future__ import annotations

import asyncio
import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.runner.options import (
    OptionInputs,
    RunnerPaths,
    build_env,
    build_options,
    effective_permission_mode,
    plan_tools,
)
from tests.fakes.anthropic import agent_config

BUILTIN_MCP = {"Builtin": {"type": "http", "url": "http://127.0.0.1:1/mcp",
                           "headers": {"Authorization": "Bearer eyJhbGciOi.token.sig"}}}


def _config(tmp_path: Path, **claude: Any) -> AgentConfig:
    return agent_config(tmp_path, "http://127.0.0.1:9", **claude)  # type: ignore[no-any-return]


def test_no_tool_list_from_the_controller_means_its_mcp_servers_and_no_builtin(tmp_path: Path) -> None:
    config = _config(tmp_path, tool_names=None, mcp_servers=BUILTIN_MCP)
    plan = plan_tools(config.claude)
    assert plan.restricted and not plan.allows("Bash") and not plan.allows("Read")
    assert plan.allows("mcp__Builtin__SearchMemory") and not plan.allows("mcp__X__y")
    options = build_options(config, RunnerPaths(tmp_path), OptionInputs(), inherited={})
    assert options.tools == [] and options.allowed_tools == ["mcp__Builtin"]


def test_no_tool_list_and_no_mcp_server_means_no_tools(tmp_path: Path) -> None:
    plan = plan_tools(_config(tmp_path).claude)
    assert plan.restricted and not plan.allows("Bash") and not plan.allows("mcp__X__y")
    options = build_options(_config(tmp_path), RunnerPaths(tmp_path), OptionInputs(), inherited={})
    assert options.tools == [] and options.allowed_tools == []


def test_empty_tool_list_means_no_tools(tmp_path: Path) -> None:
    config = _config(tmp_path, tool_names=())
    plan = plan_tools(config.claude)
    assert plan.restricted and plan.builtins == () and not plan.allows("Read")
    options = build_options(config, RunnerPaths(tmp_path), OptionInputs(), inherited={})
    assert options.tools == []


def test_controller_names_map_to_builtins_by_exact_name_only(tmp_path: Path) -> None:
    plan = plan_tools(_config(tmp_path, tool_names=("Read", "Bash", "Grep", "Read")).claude)
    assert plan.builtins == ("Read", "Bash", "Grep")
    assert plan.allows("Bash") and not plan.allows("Write")
    loose = plan_tools(_config(tmp_path, tool_names=("read-file", "BASH", "web_search", "bash")).claude)
    assert loose.builtins == () and loose.unknown == ("read-file", "BASH", "web_search", "bash")


def test_controller_names_are_never_widened_to_builtins(tmp_path: Path) -> None:
    names = ("search", "fetch", "run_command", "terminal", "shell")
    plan = plan_tools(_config(tmp_path, tool_names=names, mcp_servers=BUILTIN_MCP).claude)
    assert plan.builtins == ()
    for builtin in ("WebSearch", "WebFetch", "Bash"):
        assert not plan.allows(builtin)
    for name in names:  # the controller's MCP server offers them: they are its tools
        assert plan.allows(f"mcp__Builtin__{name}")
    options = build_options(_config(tmp_path, tool_names=names, mcp_servers=BUILTIN_MCP), RunnerPaths(tmp_path),
                            OptionInputs(), inherited={})
    assert options.tools == [] and "Bash" not in (options.allowed_tools or [])


def test_unknown_names_without_mcp_are_reported(tmp_path: Path) -> None:
    plan = plan_tools(_config(tmp_path, tool_names=("summarize-ticket", "Read")).claude)
    assert plan.builtins == ("Read",) and plan.unknown == ("summarize-ticket",)


def test_allowed_functions_whitelist_mcp_tools_and_block_other_servers(tmp_path: Path) -> None:
    servers = {**BUILTIN_MCP, "Other": {"type": "http", "url": "http://127.0.0.1:2/mcp"}}
    config = _config(tmp_path, tool_names=None, allowed_functions=("mcp__Builtin__SearchMemory",),
                     mcp_servers=servers)
    plan = plan_tools(config.claude)
    assert plan.restricted and plan.builtins == ()
    assert plan.allows("mcp__Builtin__SearchMemory")
    assert not plan.allows("mcp__Builtin__DeleteEverything") and not plan.allows("Bash")
    assert plan.blocked_servers == ("Other",) and plan.needs_call_guard()
    discovered = {"Builtin": ("mcp__Builtin__SearchMemory", "mcp__Builtin__Delete"), "Other": ("mcp__Other__x",)}
    assert plan.hidden_tools(discovered) == ["mcp__Builtin__Delete"]
    options = build_options(config, RunnerPaths(tmp_path), OptionInputs(hidden_tools=["mcp__Builtin__Delete"]),
                            inherited={})
    assert options.tools == []
    assert options.disallowed_tools == ["mcp__Other", "mcp__Builtin__Delete"]
    assert options.allowed_tools == ["mcp__Builtin__SearchMemory"]
    assert options.hooks is not None and "PreToolUse" in options.hooks


def test_plain_controller_tool_names_are_looked_for_on_the_mcp_servers(tmp_path: Path) -> None:
    plan = plan_tools(_config(tmp_path, tool_names=("SearchMemory", "Read"), mcp_servers=BUILTIN_MCP).claude)
    assert plan.builtins == ("Read",) and plan.allows("mcp__Builtin__SearchMemory") and plan.unknown == ()


def test_whole_server_whitelist(tmp_path: Path) -> None:
    plan = plan_tools(_config(tmp_path, allowed_functions=("mcp__Builtin",), mcp_servers=BUILTIN_MCP).claude)
    assert plan.allows("mcp__Builtin__anything") and not plan.needs_call_guard() and plan.blocked_servers == ()


def test_tool_guard_denies_what_is_not_whitelisted(tmp_path: Path) -> None:
    config = _config(tmp_path, allowed_functions=("mcp__Builtin__SearchMemory",), mcp_servers=BUILTIN_MCP)
    options = build_options(config, RunnerPaths(tmp_path), OptionInputs(), inherited={})
    assert options.hooks is not None
    guard: Any = options.hooks["PreToolUse"][0].hooks[0]
    allowed = asyncio.run(guard({"tool_name": "mcp__Builtin__SearchMemory"}, None, {}))
    denied = asyncio.run(guard({"tool_name": "mcp__Builtin__Delete"}, None, {}))
    assert allowed == {}
    assert denied["hookSpecificOutput"]["permissionDecision"] == "deny"


def test_child_env_blanks_inherited_secrets_and_sets_isolation(tmp_path: Path) -> None:
    paths = RunnerPaths(tmp_path)
    inherited = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "DISCORD_TOKEN": "d-secret",
        "TELEGRAM_BOT_TOKEN": "t-secret", "AIWM_AGENT_SECRET": "a-secret", "NOTIFY_SOCKET": "/run/notify",
        "ANTHROPIC_AUTH_TOKEN": "stray", "ANTHROPIC_API_KEY": "inherited-key", "SOME_OTHER": "x",
    }
    claude = _config(tmp_path, api_key="", oauth_token="oauth-value").claude
    env = build_env(claude, paths, inherited)
    for name in ("DISCORD_TOKEN", "TELEGRAM_BOT_TOKEN", "AIWM_AGENT_SECRET", "NOTIFY_SOCKET",
                 "ANTHROPIC_AUTH_TOKEN", "SOME_OTHER", "ANTHROPIC_API_KEY"):
        assert env[name] == "", name
    assert "PATH" not in env and "LANG" not in env and "LC_ALL" not in env  # inherited as they are
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == "oauth-value"
    assert env["CLAUDE_CONFIG_DIR"] == str(tmp_path / "claude" / "config")
    assert env["HOME"] == str(tmp_path / "claude")
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert build_env(claude, paths, {"CLAUDE_CODE_MAX_RETRIES": "0"})["CLAUDE_CODE_MAX_RETRIES"] == "0"


def test_no_base_url_leaves_the_cli_default(tmp_path: Path) -> None:
    claude = replace(_config(tmp_path).claude, base_url="")
    assert "ANTHROPIC_BASE_URL" not in build_env(claude, RunnerPaths(tmp_path), {})
    assert build_env(claude, RunnerPaths(tmp_path), {"ANTHROPIC_BASE_URL": "http://x"})["ANTHROPIC_BASE_URL"] == ""


def test_bypass_permissions_is_downgraded_only_for_root() -> None:
    assert effective_permission_mode("bypassPermissions", euid=0) == "acceptEdits"
    assert effective_permission_mode("bypassPermissions", euid=1000) == "bypassPermissions"
    assert effective_permission_mode("plan", euid=0) == "plan"


def test_options_carry_the_snapshot(tmp_path: Path) -> None:
    config = _config(tmp_path, model="claude-x", max_turns=7, permission_mode="plan", cli_path="/opt/claude")
    lines: list[str] = []
    options = build_options(config, RunnerPaths(tmp_path), OptionInputs(resume="sid-1", stderr=lines.append),
                            inherited={})
    # The instruction goes by a private file (never argv), and resumed sessions take the current one.
    assert options.system_prompt == {"type": "file", "path": str(tmp_path / "claude" / "instruction.md")}
    assert options.extra_args == {"system-prompt-snapshot": "off"}
    assert (options.model, options.max_turns, options.permission_mode) == ("claude-x", 7, "plan")
    assert options.cli_path == "/opt/claude" and options.resume == "sid-1" and options.stderr is not None
    assert options.cwd == str(tmp_path / "claude" / "work")
    assert options.setting_sources == [] and options.strict_mcp_config


def test_mcp_servers_go_through_a_private_file_not_argv(tmp_path: Path) -> None:
    paths = RunnerPaths(tmp_path)
    paths.create()
    options = build_options(_config(tmp_path, mcp_servers=BUILTIN_MCP), paths, OptionInputs(), inherited={})
    path = Path(str(options.mcp_servers))
    assert path == paths.mcp_config
    assert json.loads(path.read_text()) == {"mcpServers": BUILTIN_MCP}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
