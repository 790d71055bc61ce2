"""The operator commands: check-config, connect, status, --version, and `make run`'s dev-controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiwm_agentd import __version__
from tests.fakes.faulty_controller import FaultyController
from tests.harness import JWT_HEADER_B64, ROOT, Daemon, assert_no_secrets, controller_env, wait_for, write_env


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIWM_", "CLAUDE_", "DISCORD_", "TELEGRAM_"))}
    return subprocess.run([sys.executable, "-m", "aiwm_agentd", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=60)


@pytest.fixture
def ctl() -> Iterator[FaultyController]:
    with FaultyController(version="v5", bcrypt_rounds=4) as controller:
        yield controller


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"aiwm-agentd {__version__}"


def test_check_config_shows_origins_and_masks_secrets(ctl: FaultyController, tmp_path: Path) -> None:
    ctl.set_settings({"claude_model": "claude-from-controller", "discord": {"token": "discord-token-xyz-12345"}})
    env_file = write_env(tmp_path / "agent.env", controller_env(
        ctl, CLAUDE_MODEL="claude-from-env", CLAUDE_MAX_TURNS="7", TELEGRAM_BOT_TOKEN="123456:telegram-secret-abc"))
    offline = cli("check-config", "--env-file", str(env_file))
    assert offline.returncode == 0, offline.stderr
    rows = {line.split()[0]: line for line in offline.stdout.splitlines() if line.startswith("  ")}
    assert "env (CLAUDE_MODEL)" in rows["claude.model"] and "claude-from-env" in rows["claude.model"]
    assert "env (CLAUDE_MAX_TURNS)" in rows["claude.max_turns"]
    assert "default" in rows["claude.permission_mode"]
    assert "AIWM_HEARTBEAT_INTERVAL" in rows and "env" in rows["AIWM_HEARTBEAT_INTERVAL"]

    online = cli("check-config", "--connect", "--env-file", str(env_file))
    assert online.returncode == 0, online.stderr
    rows = {line.split()[0]: line for line in online.stdout.splitlines() if line.startswith("  ")}
    assert "controller (settings.claude_model)" in rows["claude.model"]
    assert "controller (settings.discord.token)" in rows["discord.token"]
    assert "controller (v5)" not in online.stdout and "connected (v5)" in online.stdout
    # A one-shot command that connected also disconnects: the portal must not show the agent online.
    assert ctl.disconnects == ["aiwm-agentd check-config --connect"]
    for output in (offline.stdout + offline.stderr, online.stdout + online.stderr):
        assert_no_secrets(output, ctl.secret, "discord-token-xyz-12345", "123456:telegram-secret-abc")


def test_check_config_bad_value_exits_78(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / "agent.env", {"AIWM_ENABLED": "false", "AIWM_HEARTBEAT_INTERVAL": "-5"})
    result = cli("check-config", "--env-file", str(env_file))
    assert result.returncode == 78
    assert result.stderr.strip() == ("aiwm-agentd: configuration error: AIWM_HEARTBEAT_INTERVAL: "
                                     "expected a positive number of seconds, got '-5'")


def test_check_config_missing_env_file_exits_78(tmp_path: Path) -> None:
    result = cli("check-config", "--env-file", str(tmp_path / "nope.env"))
    assert result.returncode == 78
    assert "--env-file" in result.stderr


def test_connect_prints_what_the_controller_returned(ctl: FaultyController, tmp_path: Path) -> None:
    ctl.set_instruction("Be brief.", ["Be polite"])
    ctl.set_version("v4")
    env_file = write_env(tmp_path / "agent.env", controller_env(ctl))
    result = cli("connect", "--env-file", str(env_file))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["connect"]["ok"] is True
    assert ctl.disconnects == ["aiwm-agentd connect (manual test)"]
    assert report["connect"]["wire_version"] == "v4"
    assert report["connect"]["instruction"] == "Be brief.\n\n## Guidelines\n1. Be polite"
    assert report["heartbeat"]["ok"] is True
    assert len(ctl.heartbeats) == 1
    assert ctl.disconnects
    assert JWT_HEADER_B64 not in result.stdout + result.stderr
    assert ctl.secret not in result.stdout + result.stderr


def test_connect_failure_names_the_reason(ctl: FaultyController, tmp_path: Path) -> None:
    ctl.suspend()
    env_file = write_env(tmp_path / "agent.env", controller_env(ctl))
    result = cli("connect", "--env-file", str(env_file))
    assert result.returncode == 69
    report = json.loads(result.stdout)
    assert report["connect"]["kind"] == "suspended"
    assert "Agent is suspended" in report["connect"]["error"]


def test_status_reports_a_running_daemon_and_a_missing_one(ctl: FaultyController, tmp_path: Path) -> None:
    d = Daemon(tmp_path, controller_env(ctl))
    try:
        d.wait_ready()
        wait_for(lambda: ctl.heartbeats, 5)
        result = cli("status", "--env-file", str(d.env_file))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "healthy, state connected" in result.stdout
        assert "heartbeat:  last" in result.stdout
        raw = cli("status", "--json", "--addr", f"127.0.0.1:{d.health_port}")
        assert json.loads(raw.stdout)["state"] == "connected"
    finally:
        d.stop()
        d.close()
    gone = cli("status", "--addr", f"127.0.0.1:{d.health_port}")
    assert gone.returncode == 69
    assert "not answering" in gone.stderr


def test_dev_controller_spawn_agent_is_the_quick_start(tmp_path: Path) -> None:
    """What `make run` does: the dev controller, the daemon against it, a clean Ctrl-C."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIWM_", "NOTIFY_SOCKET"))}
    out = (tmp_path / "run.out").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "aiwm_devtools", "--spawn-agent",
                             "--port", "0"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                            env={**base, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: "heartbeat" in (tmp_path / "run.out").read_text() and
                 (tmp_path / ".run" / "agent.env").exists(), 30, what="heartbeats in the quick start")
        env_text = (tmp_path / ".run" / "agent.env").read_text()
        assert "AIWM_AGENT_SECRET=" in env_text
        assert oct((tmp_path / ".run" / "agent.env").stat().st_mode & 0o777) == "0o600"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp_path / "run.out").read_text()
    assert "ready:" in text and "stopped in" in text


@pytest.mark.slow
def test_ask_runs_one_turn_with_the_daemons_configuration(ctl: FaultyController, tmp_path: Path) -> None:
    """`aiwm-agentd ask`: the controller's instruction and model, the env's credential, the real CLI."""
    from tests.fakes.anthropic import FakeAnthropic

    ctl.set_instruction("You are the ask-command test agent.", [])
    ctl.set_settings({"claude_model": "claude-ask-model"})
    with FakeAnthropic("pong from the fake") as fake:
        env_file = write_env(tmp_path / "agent.env", controller_env(
            ctl, ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_API_KEY="sk-ant-ask-test-000111",
            AIWM_STATE_DIR=tmp_path / "state"))
        result = cli("ask", "ping", "--env-file", str(env_file), "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "pong from the fake"
        request = fake.message_requests()[-1]
        assert request.system_text.endswith("You are the ask-command test agent.")
        assert request.body["model"] == "claude-ask-model"
        assert request.headers["x-api-key"] == "sk-ant-ask-test-000111"
        assert request.last_user_text == "ping"
        assert ctl.disconnects == ["aiwm-agentd ask"]
    assert_no_secrets(result.stdout + result.stderr, ctl.secret, "sk-ant-ask-test-000111")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the state directory to another user")
def test_ask_refuses_another_users_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4242, 4242)
    env_file = write_env(tmp_path / "agent.env", {"AIWM_ENABLED": "false", "AIWM_STATE_DIR": state})
    result = cli("ask", "hello", "--env-file", str(env_file))
    assert result.returncode == 78
    assert "run as that user" in result.stderr
