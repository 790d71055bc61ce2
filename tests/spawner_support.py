"""A tools spawner as a throw-away user, for benchmarks run as root (the spawner under systemd, by hand)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunningSpawner:
    socket: str
    pid: int
    user: str


@contextlib.contextmanager
def tools_spawner(user: str = "") -> Iterator[RunningSpawner]:
    """Start `aiwm_agentd.sandbox.spawner` as `user` (a new throw-away one when empty, removed after) on a
    socket only root may open, as systemd's socket unit leaves only the daemon's group in."""
    if os.geteuid() != 0:
        raise SystemExit("needs root (creates a throw-away tools user)")
    made = not user
    if made:
        user = f"aiwmb{uuid.uuid4().hex[:8]}"
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                       check=True)
    entry = pwd.getpwnam(user)
    public = Path(tempfile.mkdtemp(prefix="aiwm-spawner-"))
    os.chown(public, entry.pw_uid, entry.pw_gid)
    public.chmod(0o755)
    sock = public / "spawn.sock"
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--", sys.executable,
         "-m", "aiwm_agentd.sandbox.spawner", "--listen", str(sock), "--workspace", str(public / "ws"),
         "--idle-exit", "0"], cwd=str(REPO), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the tools spawner did not start listening")
            time.sleep(0.02)
        os.chown(sock, 0, 0)
        sock.chmod(0o600)
        yield RunningSpawner(str(sock), proc.pid, user)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(public, ignore_errors=True)
        if made:
            subprocess.run(["userdel", user], check=False)
