"""The sandbox's pure parts: whether it can separate, the child's environment, the launcher script."""

from __future__ import annotations

from pathlib import Path

from aiwm_agentd.runner.options import ChildSandbox, RunnerPaths, build_separated_env, write_instruction
from aiwm_agentd.sandbox import launcher
from aiwm_agentd.sandbox.identity import SandboxState, ToolsIdentity, detect, uid_mapped

SECRETS = {"AIWM_AGENT_SECRET": "agent-secret-1", "DISCORD_TOKEN": "discord-tok-2",
           "ANTHROPIC_API_KEY": "sk-ant-real-3", "CLAUDE_CODE_OAUTH_TOKEN": "oauth-real-4"}
STATE = SandboxState(True, "on", ToolsIdentity("tools", 4321, 4321), Path("/tools"), "/usr/bin/setpriv")


def test_separated_env_holds_no_secret_only_the_child_token(tmp_path: Path) -> None:
    paths = RunnerPaths.for_state_dir(tmp_path / "aiwm-agentd")
    child = ChildSandbox(STATE, token="aiwm-child-xyz", proxy_url="http://127.0.0.1:5")
    env = build_separated_env(child, paths, {**SECRETS, "PATH": "/usr/bin"}, "/cli", None)
    values = " ".join(env.values())
    assert not any(secret in values for secret in SECRETS.values())
    assert env["ANTHROPIC_API_KEY"] == "aiwm-child-xyz" and env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:5"
    assert env["HOME"] == "/tools/aiwm-agentd/home" and env["USER"] == "tools"


def test_oauth_daemon_gives_the_child_its_token_as_oauth(tmp_path: Path) -> None:
    child = ChildSandbox(STATE, token="aiwm-child-xyz", token_variable="CLAUDE_CODE_OAUTH_TOKEN")
    env = build_separated_env(child, RunnerPaths.for_state_dir(tmp_path), SECRETS, "/cli", None)
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == "aiwm-child-xyz" and env["ANTHROPIC_API_KEY"] == ""


def test_launcher_drops_everything_and_passes_only_listed_variables() -> None:
    script = launcher.launcher_script(STATE)
    for flag in ("--reuid=4321", "--regid=4321", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all",
                 "--no-new-privs", " -i -C "):
        assert flag in script
    assert "AIWM_AGENT_SECRET" not in script and "DISCORD_TOKEN" not in script
    assert "setsid" in launcher.launcher_script(SandboxState(False, "off"))


def test_instruction_file_is_private_and_keeps_large_text(tmp_path: Path) -> None:
    paths = RunnerPaths.for_state_dir(tmp_path)
    text = "x" * 200_000 + "\0end"
    target = write_instruction(paths, text)
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.read_text() == "x" * 200_000 + "end"


def test_detect_says_why_it_cannot_separate(tmp_path: Path) -> None:
    no_caps = "CapEff:\t0000000000000000\n"
    assert not detect("", tmp_path).separated
    assert "does not exist" in detect("no-such-user-aiwm", tmp_path).detail
    state = detect("nobody", tmp_path, euid=1000, status_text=no_caps, uid_map_text="0 0 4294967295")
    assert not state.separated and "CAP_SETUID" in state.detail
    caps = f"CapEff:\t{(1 << 6 | 1 << 7):016x}\n"
    mapped_only_self = "0 0 1\n1000 1000 1\n"
    assert "PrivateUsers" in detect("nobody", tmp_path, euid=1000, status_text=caps,
                                     uid_map_text=mapped_only_self, setpriv="/x").detail
    ok = detect("nobody", tmp_path, euid=1000, status_text=caps, uid_map_text="0 0 4294967295", setpriv="/x")
    assert ok.separated and not ok.can_drop_bounding_set and ok.health()["separated"] is True


def test_uid_map_ranges() -> None:
    assert uid_mapped(65534, "0 0 4294967295") and not uid_mapped(65534, "0 0 1\n999 999 1")
