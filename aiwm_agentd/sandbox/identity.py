"""Whether this daemon can run its Claude CLI children as the tools user, and why not when it cannot.

The way under systemd is the tools spawner (`CLAUDE_TOOLS_SOCKET`, aiwm-agentd-tools.socket, spawner.py): a
unit of its own, as its own user, which the daemon only asks over a socket. It is used when that socket
accepts a connection; the daemon then needs no privilege at all.

Without a spawner, a daemon running as root (by hand, in a container) switches users itself (setpriv).
That needs: a configured tools user that exists and is neither root nor the daemon's own user, the
power to switch to it (root, or CAP_SETUID and CAP_SETGID in the effective set: the unit grants them as
ambient capabilities), that uid mapped in our user namespace (`PrivateUsers=yes` maps only root and the
service user), `setpriv` from util-linux, and the tools workspace directory. A daemon run by hand as a normal
user has none of this: it keeps working unseparated and says so once at start and in /health.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8


@dataclass(frozen=True)
class ToolsIdentity:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class SandboxState:
    """The outcome of `detect`: `separated` with the identity to drop to, or the reason it is off."""

    separated: bool
    detail: str
    identity: ToolsIdentity | None = None
    tools_dir: Path | None = None
    setpriv: str = ""
    can_drop_bounding_set: bool = False  # CAP_SETPCAP: the launcher also empties the child's bounding set
    spawner_socket: str = ""  # set: the CLI children are started by the tools spawner listening here

    def health(self) -> dict[str, object]:
        """The `sandbox` field of /health."""
        shown: dict[str, object] = {"separated": self.separated, "detail": self.detail}
        if self.identity is not None:
            shown["tools_user"] = self.identity.name
        if self.spawner_socket:
            shown["spawner"] = self.spawner_socket
        return shown

    @property
    def spawner(self) -> bool:
        return bool(self.spawner_socket)


def effective_caps(status_text: str) -> int:
    """CapEff from the text of /proc/<pid>/status (0 when absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def uid_mapped(uid: int, uid_map_text: str) -> bool:
    """Whether `uid` (as seen inside our user namespace) is in /proc/self/uid_map."""
    for line in uid_map_text.splitlines():
        fields = line.split()
        if len(fields) == 3 and int(fields[0]) <= uid < int(fields[0]) + int(fields[2]):
            return True
    return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return ""


def spawner_reachable(path: str, timeout: float = 2.0) -> str:
    """'' when the tools spawner's socket accepts a connection, else why not (one line)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        probe.close()
    return ""


def detect(user: str, tools_dir: Path, *, socket_path: str = "", euid: int | None = None,
           status_text: str | None = None, uid_map_text: str | None = None,
           setpriv: str | None = None) -> SandboxState:
    """Decide once at start whether the CLI children can be separated; every input is injectable."""
    spawner_problem = ""
    if socket_path:
        spawner_problem = spawner_reachable(socket_path)
        if not spawner_problem:
            return SandboxState(True, f"on: the Claude CLI and its tools run in the tools spawner's unit "
                                      f"({socket_path})", spawner_socket=socket_path)
    state = _detect_setpriv(user, tools_dir, euid=euid, status_text=status_text, uid_map_text=uid_map_text,
                            setpriv=setpriv)
    if not state.separated and socket_path:
        return SandboxState(False, f"{state.detail}; the tools spawner {socket_path} is unreachable "
                                   f"({spawner_problem})")
    return state


def _detect_setpriv(user: str, tools_dir: Path, *, euid: int | None, status_text: str | None,
                    uid_map_text: str | None, setpriv: str | None) -> SandboxState:
    euid = os.geteuid() if euid is None else euid
    if not user:
        return SandboxState(False, "off: CLAUDE_TOOLS_USER is empty")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return SandboxState(False, f"off: the tools user {user} does not exist")
    identity = ToolsIdentity(user, entry.pw_uid, entry.pw_gid)
    if identity.uid in (0, euid):
        return SandboxState(False, f"off: the tools user {user} is root or the daemon's own user")
    caps = effective_caps(_read("/proc/self/status") if status_text is None else status_text)
    need = (1 << CAP_SETUID) | (1 << CAP_SETGID)
    if euid != 0 and caps & need != need:
        return SandboxState(False, "off: the daemon lacks CAP_SETUID/CAP_SETGID (run by hand, or an old unit)")
    uid_map = _read("/proc/self/uid_map") if uid_map_text is None else uid_map_text
    if uid_map and not uid_mapped(identity.uid, uid_map):
        return SandboxState(False, "off: the tools uid is not mapped here (PrivateUsers=yes)")
    tool = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin") if setpriv is None else setpriv
    if not tool:
        return SandboxState(False, "off: setpriv (util-linux) is not installed")
    if not tools_dir.is_dir():
        return SandboxState(False, f"off: the tools workspace {tools_dir} does not exist")
    return SandboxState(True, f"on: the Claude CLI and its tools run as {user}", identity, tools_dir, tool,
                        can_drop_bounding_set=euid == 0 or bool(caps & (1 << CAP_SETPCAP)))
