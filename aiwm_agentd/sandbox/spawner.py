"""The tools spawner: starts the Claude CLI as the tools user for the daemon, in a unit of its own.

`aiwm-agentd tools-spawner` runs as `aiwm-agentd-tools.service` (User=aiwm-agentd-tools; the template
`aiwm-agentd-tools@NAME` runs each instance's tools as a user of its own), socket-activated on a socket only the
daemon's group may open. The daemon therefore needs no capability and keeps PrivateUsers=yes: privilege
separation is the two units, not a uid switch inside one.

One connection is one CLI child:
1. the stand-in (spawn_client.py, the SDK's `cli_path`) sends its stdin/stdout/stderr (SCM_RIGHTS) and a spawn
   request: argv, the environment (already filtered), the per-child files;
2. we write the files (0600) into a run directory of that connection, replace RUN_DIR_PREFIX in argv and the
   environment with it, and start the CLI in a new session (its own process group) with the SDK's pipes as
   its stdio, in the workspace's `work/`, HOME and the Claude config dir in the workspace;
3. a `signal` message is passed on to the child's process group; when the child exits we send its status;
   when the connection closes, whatever is left of the group is SIGKILLed and the run directory removed.

A second kind of connection asks for `rss`: the resident memory of each child's process group, keyed by the
stand-in's pid (SO_PEERCRED), for the runner's memory budget (the daemon cannot read our /proc).

One thread, one selector, pidfds for the children: idle, the spawner sleeps in one poll; with nothing running it
exits after `idle_exit` seconds (socket activation starts it again on the next connection). Standard library
only, so it stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiwm_agentd.sandbox.spawn_client import RUN_DIR_PREFIX, FrameReader, encode

log = logging.getLogger("aiwm_agentd.sandbox.spawner")

SD_LISTEN_FDS_START = 3
MAX_CONNECTIONS = 64
ALLOWED_FILES = frozenset({"instruction.md", "mcp.json"})


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    peer_pid: int
    number: int
    reader: FrameReader = field(default_factory=FrameReader)
    stdio: list[int] = field(default_factory=list)
    child: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    run_dir: Path | None = None
    exited: bool = False


def peer_pid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def group_rss(pgids: set[int], proc: str = "/proc") -> dict[int, int]:
    """Resident bytes of every process in each of these process groups (one pass over /proc)."""
    page = os.sysconf("SC_PAGE_SIZE")
    totals = dict.fromkeys(pgids, 0)
    if not pgids:
        return totals
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 21:
            pgrp = int(fields[2])
            if pgrp in totals:
                totals[pgrp] += int(fields[21]) * page
    return totals


def substitute(value: str, run_dir: Path) -> str:
    return str(run_dir) + value[len(RUN_DIR_PREFIX):] if value.startswith(RUN_DIR_PREFIX) else value


class Spawner:
    """Serve spawn and rss requests on `listener` until stopped or idle for `idle_exit` seconds."""

    def __init__(self, listener: socket.socket, workspace: Path, *, idle_exit: float = 300.0) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._workspace = workspace
        self._idle_exit = idle_exit
        self._selector = selectors.DefaultSelector()
        self._connections: set[_Connection] = set()
        self._count = 0
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            self._user = str(os.getuid())

    def stop(self) -> None:
        """Ask serve_forever to return (any thread, or a signal handler)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve_forever(self) -> None:
        for name in ("home", "config", "work", "run"):
            (self._workspace / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._clear_stale_runs()
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                timeout = None
                if self._idle_exit > 0:
                    if self._connections:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= self._idle_exit:
                        log.info("idle for %.0f s with no CLI running: exiting until the next connection",
                                 self._idle_exit)
                        return
                    timeout = self._idle_exit
                for key, _events in self._selector.select(timeout):
                    try:
                        self._dispatch(key.data)
                    except Exception:  # one bad connection must not take the others' CLIs down
                        log.exception("error while serving a connection")
                        if isinstance(key.data, _Connection):
                            self._close(key.data)
        finally:
            for conn in list(self._connections):
                self._close(conn)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _dispatch(self, data: Any) -> None:
        if data == "listen":
            self._accept()
        elif data == "wake":
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 64)
        elif isinstance(data, tuple) and data[0] == "exit":
            self._child_exited(data[1])
        elif isinstance(data, _Connection):
            self._readable(data)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("refused a connection: %d CLI children already running", MAX_CONNECTIONS)
            sock.close()
            return
        sock.setblocking(False)
        self._count += 1
        conn = _Connection(sock, peer_pid(sock), self._count)
        self._connections.add(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _readable(self, conn: _Connection) -> None:
        try:
            if conn.child is None and not conn.stdio:
                data, fds, _flags, _addr = socket.recv_fds(conn.sock, 65536, 3)
                for fd in fds:
                    os.set_inheritable(fd, False)
                conn.stdio = list(fds)
            else:
                data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        try:
            messages = conn.reader.feed(data)
        except ValueError as exc:
            self._refuse(conn, str(exc))
            return
        for message in messages:
            op = message.get("op")
            if op == "spawn" and conn.child is None:
                self._spawn(conn, message)
            elif op == "signal" and conn.child is not None:
                self._signal_group(conn, int(message.get("signal") or signal.SIGTERM))
            elif op == "rss":
                self._send(conn, {"rss": self._rss_by_peer()})
                self._close(conn)
                return
            else:
                self._refuse(conn, f"unexpected request {op!r}")
                return

    def _spawn(self, conn: _Connection, request: dict[str, Any]) -> None:
        argv, env, files = request.get("argv"), request.get("env"), request.get("files") or {}
        if (len(conn.stdio) != 3 or not isinstance(argv, list) or not argv or not isinstance(env, dict)
                or not isinstance(files, dict) or not set(files) <= ALLOWED_FILES):
            self._refuse(conn, "malformed spawn request (argv, env, files and three descriptors expected)")
            return
        run_dir = self._workspace / "run" / f"{os.getpid()}-{conn.number}"
        conn.run_dir = run_dir
        try:
            run_dir.mkdir(mode=0o700)
            for name, content in files.items():
                fd = os.open(run_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(str(content))
        except OSError as exc:
            self._refuse(conn, f"cannot write the child's files: {exc.strerror or exc}")
            return
        child_env = {str(k): substitute(str(v), run_dir) for k, v in env.items()}
        child_env.update({"USER": self._user, "LOGNAME": self._user,
                          "HOME": str(self._workspace / "home"),
                          "CLAUDE_CONFIG_DIR": str(self._workspace / "config"),
                          "PWD": str(self._workspace / "work")})
        try:
            conn.child = subprocess.Popen(
                [substitute(str(a), run_dir) for a in argv], stdin=conn.stdio[0], stdout=conn.stdio[1],
                stderr=conn.stdio[2], env=child_env, cwd=self._workspace / "work", start_new_session=True,
                close_fds=True, umask=0o077)
            conn.pidfd = os.pidfd_open(conn.child.pid)
        except OSError as exc:
            self._refuse(conn, f"cannot start {argv[0]}: {exc.strerror or exc}")
            return
        finally:
            for fd in conn.stdio:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._selector.register(conn.pidfd, selectors.EVENT_READ, ("exit", conn))
        self._send(conn, {"started": conn.child.pid})
        log.debug("started CLI pid %d for pid %d", conn.child.pid, conn.peer_pid)

    def _child_exited(self, conn: _Connection) -> None:
        child = conn.child
        if child is None or conn.exited:  # closed in the same round, before this event was handled
            return
        code = child.wait()
        conn.exited = True
        self._selector.unregister(conn.pidfd)
        os.close(conn.pidfd)
        conn.pidfd = -1
        self._send(conn, {"signal": -code} if code < 0 else {"exit": code})

    def _signal_group(self, conn: _Connection, signum: int) -> None:
        if conn.child is not None and not conn.exited:
            with contextlib.suppress(OSError):
                os.killpg(conn.child.pid, signum)

    def _rss_by_peer(self) -> dict[str, int]:
        children = {c.child.pid: c.peer_pid for c in self._connections if c.child is not None and not c.exited}
        return {str(children[pgid]): rss for pgid, rss in group_rss(set(children)).items()}

    def _send(self, conn: _Connection, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            conn.sock.setblocking(True)
            conn.sock.settimeout(5.0)
            conn.sock.sendall(encode(message))
            conn.sock.setblocking(False)

    def _refuse(self, conn: _Connection, reason: str) -> None:
        log.warning("refused a request from pid %d: %s", conn.peer_pid, reason)
        self._send(conn, {"error": reason})
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        """The stand-in is gone (or refused): end every process the child's turn started, then clean up."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        for fd in conn.stdio if conn.child is None else ():
            with contextlib.suppress(OSError):
                os.close(fd)
        if conn.child is not None:
            with contextlib.suppress(OSError):
                os.killpg(conn.child.pid, signal.SIGKILL)
            if not conn.exited:
                conn.child.wait()
                conn.exited = True
                self._selector.unregister(conn.pidfd)
                os.close(conn.pidfd)
                conn.pidfd = -1
        if conn.run_dir is not None:
            shutil.rmtree(conn.run_dir, ignore_errors=True)

    def _clear_stale_runs(self) -> None:
        for entry in (self._workspace / "run").iterdir():
            shutil.rmtree(entry, ignore_errors=True)


def listener_from_systemd(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The listening socket passed by socket activation (LISTEN_FDS), or None."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("LISTEN_PID") != str(os.getpid()) or int(environ.get("LISTEN_FDS") or 0) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    # Never inherited by the CLI: a tool holding it could accept the daemon's next connection.
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiwm-agentd tools-spawner",
                                     description="Start the Claude CLI as the tools user for aiwm-agentd.")
    parser.add_argument("--listen", help="a unix socket path to listen on (default: socket activation)")
    parser.add_argument("--workspace", help="the tools workspace (default: $STATE_DIRECTORY)")
    parser.add_argument("--idle-exit", type=float, default=300.0,
                        help="exit after this many seconds with no CLI running (0: never; default 300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    workspace = args.workspace or (os.environ.get("STATE_DIRECTORY", "").split(":")[0])
    if not workspace:
        print("aiwm-agentd tools-spawner: no workspace (--workspace or $STATE_DIRECTORY)", file=sys.stderr)
        return 78
    listener = listener_from_systemd()
    if listener is None:
        if not args.listen:
            print("aiwm-agentd tools-spawner: no socket (--listen PATH or socket activation)", file=sys.stderr)
            return 78
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.listen)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.listen)
        listener.listen(16)
    spawner = Spawner(listener, Path(workspace), idle_exit=args.idle_exit)
    signal.signal(signal.SIGTERM, lambda *_: spawner.stop())
    signal.signal(signal.SIGINT, lambda *_: spawner.stop())
    spawner.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
