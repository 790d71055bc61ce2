"""The `cli_path` launcher: every Claude CLI child starts in a session of its own, and as the tools user.

With the tools spawner (the default under systemd), `cli_path` is the spawner's stand-in, spawn_client.py
written out as a script: the spawner's unit does the rest. Without one, as follows.

The SDK starts `cli_path` with the daemon's environment merged with `options.env`, as the daemon's user (its
`user=` option changes the uid only: groups and capabilities would stay). So `cli_path` is a small shell
script written at start into the daemon's state dir (0700) that, separated:

1. as the tools user (`setpriv`, see `drop_command`), creates the workspace directories and copies the
   per-child files into them with umask 077: the instruction (`--system-prompt-file`, never argv) and the MCP
   configuration; the daemon opens the sources (in its 0700 state dir) on the copy's stdin, so the files end
   up 0600, owned by the tools user, in its own space;
2. execs `setsid` (a new session and process group: `kill_tree` ends every process a turn started) ->
   `setpriv` (tools uid and gid, no supplementary group, inheritable and ambient capabilities cleared, the
   bounding set too when we hold CAP_SETPCAP, no-new-privs: nothing can gain a capability again) ->
   `env -i` (only the variables in CHILD_ENV_NAMES, the per-child token among them; `-C` the work dir) ->
   the CLI. The pid the SDK holds stays the CLI's through the exec chain.

Not separated, it only does `setsid` + exec, with the instruction file the daemon wrote (0600) itself.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from aiwm_agentd.sandbox import spawn_client
from aiwm_agentd.sandbox.identity import SandboxState
from aiwm_agentd.sandbox.spawn_client import CHILD_ENV_NAMES, CLI_VAR, INSTRUCTION_VAR, MCP_VAR

__all__ = ["CHILD_ENV_NAMES", "CLI_VAR", "INSTRUCTION_VAR", "MCP_VAR", "WORKSPACE_VAR", "kill_tree",
           "launcher_script", "write_launcher"]

WORKSPACE_VAR = "AIWM_SANDBOX_WORKSPACE"  # setpriv only: the tools user's workspace of this instance


def _tool(name: str) -> str:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin") or f"/usr/bin/{name}"


def drop_command(state: SandboxState) -> list[str]:
    """`setpriv` arguments that become the tools user with no group and no capability (argv prefix)."""
    assert state.identity is not None
    command = [state.setpriv or _tool("setpriv"), f"--reuid={state.identity.uid}",
               f"--regid={state.identity.gid}", "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all"]
    if state.can_drop_bounding_set:
        command.append("--bounding-set=-all")
    return [*command, "--no-new-privs", "--"]


def stand_in_script() -> str:
    """The tools spawner's stand-in (spawn_client.py) as a script of its own: `python3 -IS`, no site, no
    package import, so it starts fast and small."""
    source = Path(spawn_client.__file__).read_text(encoding="utf-8")
    return f"#!{sys.executable} -IS\n# Written by aiwm-agentd at start from {spawn_client.__file__}.\n{source}"


def launcher_script(state: SandboxState) -> str:
    if state.spawner:
        return stand_in_script()
    lines = ["#!/bin/sh",
             "# Written by aiwm-agentd at start (aiwm_agentd/sandbox/launcher.py): the Claude CLI's launcher.",
             "set -eu", "umask 077"]
    setsid = shlex.quote(_tool("setsid"))
    if not state.separated:
        lines.append(f'exec {setsid} "${CLI_VAR}" "$@"')
        return "\n".join(lines) + "\n"
    drop = " ".join(shlex.quote(a) for a in drop_command(state))
    copy = ('umask 077 && mkdir -p -- "$1/home" "$1/config" "$1/work" "$1/run" '
            '&& cat > "$1/run/$2.$$" && mv -f -- "$1/run/$2.$$" "$1/run/$2"')
    env = " ".join(f'"{name}=${{{name}-}}"' for name in CHILD_ENV_NAMES)
    lines += [
        f'ws="${WORKSPACE_VAR}"',
        f"{drop} /bin/sh -c {shlex.quote(copy)} sh \"$ws\" instruction.md < \"${INSTRUCTION_VAR}\"",
        # Each child's MCP configuration under its own name (it holds that child's token); older ones
        # (revoked tokens) are swept after a day.
        f'if [ -n "${{{MCP_VAR}:-}}" ]; then',
        f"  {drop} /bin/sh -c {shlex.quote(copy)} sh \"$ws\" \"$(basename \"${MCP_VAR}\")\" < \"${MCP_VAR}\"",
        f"  {drop} find \"$ws/run\" -name 'mcp*.json' -mmin +1440 -delete 2>/dev/null || true",
        "fi",
        f'exec {setsid} {drop} {shlex.quote(_tool("env"))} -i -C "$ws/work" {env} "${CLI_VAR}" "$@"',
    ]
    return "\n".join(lines) + "\n"


def write_launcher(path: Path, state: SandboxState) -> Path:
    """Write the launcher (0700, owned by the daemon) atomically; returns its path."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(launcher_script(state))
    os.replace(tmp, path)
    return path


def kill_tree(pid: int, state: SandboxState, sig: int = signal.SIGKILL, *, leader_too: bool = True) -> None:
    """Signal the process group of a CLI child (its whole turn: tools, their background jobs).

    A separated child belongs to the tools user, which the daemon (no CAP_KILL) may not signal: the kill goes
    through the same drop to that user. A child still in its launcher (the daemon's uid) is signalled
    directly too (`leader_too`: not once the SDK reaped it, its pid may be reused).

    With the tools spawner, `pid` is the stand-in: killing it closes its connection, and the spawner kills
    the CLI's process group at once. Once the stand-in is reaped, the spawner has already done so."""
    if state.spawner:
        if leader_too:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)
    if leader_too:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    if state.separated:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*drop_command(state), "/bin/kill", f"-{int(sig)}", "--", f"-{pid}"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=5, check=False, env={"PATH": "/usr/bin:/bin"})

