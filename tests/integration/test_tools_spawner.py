"""The tools spawner for real: a spawner process running as a throw-away tools user, and the stand-in the SDK
would start (the script the launcher writes), with a fake CLI that reports who and where it is."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiwm_agentd.sandbox import launcher
from aiwm_agentd.sandbox.identity import detect
from aiwm_agentd.sandbox.spawn_client import EXIT_NO_SPAWNER, encode, query_rss
from tests.integration.test_sandbox_launcher import tools_user  # noqa: F401  (fixture)

SECRET = "sk-ant-daemon-only-spawner-5b5b"
FAKE_CLI = """#!/bin/sh
echo "uid=$(id -u) user=$USER home=$HOME cwd=$(pwd)"
echo "args=$*"
stat -c 'file=%a:%U' "$2"
cat "$2"; echo
ls /proc/self/fd | tr '\\n' ' '; echo
env | sort
read line; echo "stdin=$line"
echo "to-stderr" >&2
exit 7
"""
LINGER_CLI = """#!/bin/sh
trap 'echo got-term > "$HOME/term"; exit 9' TERM
(sleep 300; echo leaked) &
echo started
while :; do sleep 0.05; done
"""


@dataclass
class Rig:
    workspace: Path
    socket: str
    launcher: Path
    public: Path
    process: subprocess.Popen[bytes]


def _wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return False


def _start(tools_user: str, public: Path, idle_exit: float = 0.0) -> subprocess.Popen[bytes]:  # noqa: F811
    entry = pwd.getpwnam(tools_user)
    workspace, sock = public / "ws", public / "spawn.sock"
    return subprocess.Popen(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--",
         sys.executable, "-m", "aiwm_agentd.sandbox.spawner", "--listen", str(sock), "--workspace",
         str(workspace), "--idle-exit", str(idle_exit)],
        cwd=str(Path(__file__).resolve().parents[2]), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def rig(tools_user: str) -> Iterator[Rig]:  # noqa: F811
    public = Path(tempfile.mkdtemp(prefix="aiwm-spawner-"))
    public.chmod(0o755)
    entry = pwd.getpwnam(tools_user)
    workspace = public / "ws"
    workspace.mkdir()
    os.chown(workspace, entry.pw_uid, entry.pw_gid)
    workspace.chmod(0o700)
    os.chown(public, entry.pw_uid, entry.pw_gid)
    process = _start(tools_user, public)
    sock = str(public / "spawn.sock")
    assert _wait_for(lambda: os.path.exists(sock)), "the spawner did not listen"
    state = detect(tools_user, workspace, socket_path=sock)
    assert state.separated and state.spawner, state.detail
    stand_in = launcher.write_launcher(public / "daemon" / "claude-launcher", state)
    try:
        yield Rig(workspace, sock, stand_in, public, process)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(public, ignore_errors=True)


def _cli(rig: Rig, text: str) -> Path:
    cli = rig.public / f"cli-{time.monotonic_ns()}"
    cli.write_text(text)
    cli.chmod(0o755)
    return cli


def _env(rig: Rig, cli: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "AIWM_SANDBOX_SOCKET": rig.socket, "AIWM_SANDBOX_CLI": str(cli),
            "AIWM_AGENT_SECRET": SECRET, "ANTHROPIC_API_KEY": "per-child-token", **extra}


def test_the_cli_runs_as_the_tools_user_in_its_workspace_with_only_its_files(rig: Rig, tools_user: str) -> None:  # noqa: F811
    instruction = rig.public / "instruction.md"
    instruction.write_text("THE-INSTRUCTION")
    instruction.chmod(0o600)
    done = subprocess.run([str(rig.launcher), "--system-prompt-file", "@run@/instruction.md"],
                          env=_env(rig, _cli(rig, FAKE_CLI), AIWM_SANDBOX_INSTRUCTION=str(instruction)),
                          input=b"hello\n", capture_output=True, timeout=20)
    out = done.stdout.decode()
    assert done.returncode == 7, (out, done.stderr)
    uid = pwd.getpwnam(tools_user).pw_uid
    assert f"uid={uid} user={tools_user} home={rig.workspace}/home cwd={rig.workspace}/work" in out
    assert f"args=--system-prompt-file {rig.workspace}/run/" in out
    assert f"file=600:{tools_user}" in out and "THE-INSTRUCTION" in out
    assert "stdin=hello" in out and done.stderr.decode().strip() == "to-stderr"
    assert SECRET not in out and "AIWM_SANDBOX" not in out and "ANTHROPIC_API_KEY=per-child-token" in out
    fds = next(line for line in out.splitlines() if line.startswith("0 1 2"))
    assert fds.split() == ["0", "1", "2", "3"], fds  # 3: ls's own directory handle; nothing inherited
    assert _wait_for(lambda: not any((rig.workspace / "run").iterdir())), "the run directory stayed"


def test_killing_the_stand_in_kills_the_whole_turn(rig: Rig, tools_user: str) -> None:  # noqa: F811
    uid = pwd.getpwnam(tools_user).pw_uid
    stand_in = subprocess.Popen([str(rig.launcher)], env=_env(rig, _cli(rig, LINGER_CLI)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert stand_in.stdout is not None and stand_in.stdout.readline() == b"started\n"
    assert _wait_for(lambda: len(_processes_of(uid, "sleep")) >= 1)
    rss = query_rss(rig.socket)
    assert rss.get(stand_in.pid, 0) > 1024 * 1024, rss
    state = detect(tools_user, rig.workspace, socket_path=rig.socket)
    launcher.kill_tree(stand_in.pid, state)
    stand_in.wait(5)
    assert _wait_for(lambda: not _processes_of(uid, "sleep") and not _processes_of(uid, "sh")), \
        _processes_of(uid, "")
    assert query_rss(rig.socket) == {}


def test_sigterm_to_the_stand_in_reaches_the_cli(rig: Rig) -> None:
    stand_in = subprocess.Popen([str(rig.launcher)], env=_env(rig, _cli(rig, LINGER_CLI)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert stand_in.stdout is not None and stand_in.stdout.readline() == b"started\n"
    stand_in.send_signal(signal.SIGTERM)
    assert stand_in.wait(5) == 9
    assert (rig.workspace / "home" / "term").read_text().strip() == "got-term"


def test_a_malformed_request_is_refused_with_a_reason(rig: Rig) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(rig.socket)
        sock.sendall(encode({"op": "spawn", "argv": "not-a-list"}))
        answer = sock.recv(65536)
    assert b"malformed spawn request" in answer
    assert rig.process.poll() is None


def test_without_a_spawner_the_stand_in_fails_with_one_line(tmp_path: Path) -> None:
    state = detect("", tmp_path, socket_path=str(tmp_path / "nothing.sock"))
    assert not state.separated and "unreachable" in state.detail
    from aiwm_agentd.sandbox.identity import SandboxState

    stand_in = launcher.write_launcher(tmp_path / "stand-in", SandboxState(True, "on", spawner_socket="x"))
    done = subprocess.run([str(stand_in)], env={"AIWM_SANDBOX_SOCKET": str(tmp_path / "nothing.sock"),
                                                "AIWM_SANDBOX_CLI": "/bin/true"},
                          capture_output=True, timeout=10)
    assert done.returncode == EXIT_NO_SPAWNER
    assert done.stderr.decode().count("\n") == 1 and "cannot reach" in done.stderr.decode()


def test_an_idle_spawner_exits_and_says_why(tools_user: str) -> None:  # noqa: F811
    public = Path(tempfile.mkdtemp(prefix="aiwm-spawner-"))
    try:
        entry = pwd.getpwnam(tools_user)
        os.chown(public, entry.pw_uid, entry.pw_gid)
        process = _start(tools_user, public, idle_exit=0.3)
        _out, err = process.communicate(timeout=10)
        assert process.returncode == 0
        assert b"idle for 0 s with no CLI running" in err
    finally:
        shutil.rmtree(public, ignore_errors=True)


def _processes_of(uid: int, name: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/comm") as handle:
                comm = handle.read().strip()
        except OSError:
            continue
        if name in comm:
            found.append(f"{entry}:{comm}")
    return found


def test_a_child_exit_and_its_connection_closing_in_one_round_do_not_stop_the_spawner(tmp_path: Path) -> None:
    """Regression: both events in one select round (the CLI exits, its stand-in goes) raised KeyError when the
    exit was handled after the close, and the spawner died with every other conversation's CLI."""
    from aiwm_agentd.sandbox.spawner import Spawner, _Connection

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s.sock"))
    listener.listen(1)
    spawner = Spawner(listener, tmp_path / "ws", idle_exit=0)
    ours, theirs = socket.socketpair()
    conn = _Connection(ours, peer_pid=os.getpid(), number=1)
    conn.child = subprocess.Popen(["true"], start_new_session=True)
    conn.pidfd = os.pidfd_open(conn.child.pid)
    spawner._connections.add(conn)
    spawner._selector.register(ours, 1, conn)
    spawner._selector.register(conn.pidfd, 1, ("exit", conn))
    conn.child.wait()
    spawner._close(conn)
    spawner._dispatch(("exit", conn))  # the exit event of the same round: must be a no-op now
    assert conn.exited and conn.pidfd == -1 and not spawner._connections
    theirs.close()
    listener.close()
