"""The sandbox for real, as root: the launcher drops uid, gid, groups and capabilities and passes no secret;
the Anthropic API proxy forwards with the real credential and refuses wrong or revoked per-child tokens."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from aiwm_agentd.runner.options import ChildSandbox, RunnerPaths, build_separated_env, write_instruction
from aiwm_agentd.sandbox import launcher
from aiwm_agentd.sandbox.api_proxy import ApiProxy, Upstream
from aiwm_agentd.sandbox.identity import SandboxState, detect
from tests.fakes.anthropic import FakeAnthropic

SECRET = "sk-ant-daemon-only-9f2c"
FAKE_CLI = """#!/bin/sh
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
grep -E '^(Cap(Inh|Prm|Eff|Amb)|NoNewPrivs)' /proc/self/status
echo "cwd=$(pwd)"
stat -c 'instruction=%a:%U' "$HOME/../run/instruction.md"
cat "$HOME/../run/instruction.md"; echo
echo "args=$*"
env
"""


@pytest.fixture
def tools_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a throw-away user and drops to it")
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd or setpriv missing")
    name = f"aiwmt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def _separated(tools_user: str) -> tuple[SandboxState, Path, Path]:
    public = Path(tempfile.mkdtemp(prefix="aiwm-sbx-"))
    public.chmod(0o755)
    tools_dir = public / "tools"
    tools_dir.mkdir()
    entry = pwd.getpwnam(tools_user)
    os.chown(tools_dir, entry.pw_uid, entry.pw_gid)
    tools_dir.chmod(0o700)
    cli = public / "fake-cli"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    state = detect(tools_user, tools_dir)
    assert state.separated, state.detail
    return state, tools_dir, cli


def test_launcher_runs_the_cli_as_the_tools_user_without_secrets(tools_user: str, tmp_path: Path) -> None:
    state, tools_dir, cli = _separated(tools_user)
    try:
        paths = RunnerPaths.for_state_dir(tmp_path / "aiwm-agentd")
        paths.create()
        write_instruction(paths, "THE INSTRUCTION")
        script = launcher.write_launcher(paths.launcher, state)
        inherited = {"PATH": "/usr/bin:/bin", "AIWM_AGENT_SECRET": SECRET, "ANTHROPIC_API_KEY": SECRET}
        env = {**inherited, **build_separated_env(ChildSandbox(state, token="aiwm-child-t1"), paths, inherited,
                                                   str(cli), None)}
        out = subprocess.run([str(script), "--print", "hi"], env=env, cwd=paths.claude_home,
                             capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        shutil.rmtree(tools_dir.parent, ignore_errors=True)
    entry = pwd.getpwnam(tools_user)
    assert f"uid={entry.pw_uid} gid={entry.pw_gid} groups={entry.pw_gid}\n" in out
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert f"{cap}:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert f"cwd={tools_dir}/aiwm-agentd/work" in out
    assert f"instruction=600:{tools_user}" in out and "THE INSTRUCTION" in out
    assert "args=--print hi" in out
    assert SECRET not in out and "AIWM_SANDBOX" not in out
    assert "ANTHROPIC_API_KEY=aiwm-child-t1" in out


def test_kill_tree_ends_a_separated_process_group(tools_user: str) -> None:
    state, tools_dir, _cli = _separated(tools_user)
    try:
        child = subprocess.Popen(["setsid", *launcher.drop_command(state), "/bin/sh", "-c",
                                  "sleep 300 & sleep 300 & wait"], start_new_session=False)
        time.sleep(0.3)
        launcher.kill_tree(child.pid, state)
        assert child.wait(timeout=10) != 0
        deadline = time.monotonic() + 5
        while (left := _live_processes_of(tools_user)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == []
    finally:
        shutil.rmtree(tools_dir.parent, ignore_errors=True)


def _live_processes_of(user: str) -> list[str]:
    """Pids of the user's processes that are not zombies (a killed child waits for its reaper a moment)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-u", user], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[1:2] != ["Z"]]


def test_api_proxy_forwards_with_the_real_key_and_refuses_other_tokens() -> None:
    fake = FakeAnthropic("pong").start()
    proxy = ApiProxy(Upstream(fake.url, SECRET, ""))
    proxy.start()
    try:
        token = proxy.issue("test:1")
        body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        url = f"{proxy.url}/v1/messages?beta=true"
        answer = requests.post(url, json=body, headers={"x-api-key": token}, timeout=10)
        assert answer.status_code == 200 and "pong" in answer.text
        seen = fake.message_requests()[-1]
        assert seen.headers["x-api-key"] == SECRET and seen.query == "beta=true"
        assert requests.post(url, json=body, headers={"x-api-key": "aiwm-child-wrong"}, timeout=10).status_code == 401
        proxy.revoke(token)
        assert requests.post(url, json=body, headers={"x-api-key": token}, timeout=10).status_code == 401
        assert len(fake.message_requests()) == 1
    finally:
        proxy.stop()
        fake.stop()


def test_api_proxy_sends_the_oauth_token_as_bearer() -> None:
    fake = FakeAnthropic("pong").start()
    proxy = ApiProxy(Upstream(fake.url, "", "oauth-daemon-only"))
    proxy.start()
    try:
        token = proxy.issue("test:1")
        assert proxy.upstream().child_variable == "CLAUDE_CODE_OAUTH_TOKEN"
        answer = requests.post(f"{proxy.url}/v1/messages", json={"model": "m", "messages": []},
                               headers={"authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
        assert fake.message_requests()[-1].headers["authorization"] == "Bearer oauth-daemon-only"
    finally:
        proxy.stop()
        fake.stop()
