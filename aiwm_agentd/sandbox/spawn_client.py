"""The Claude CLI's stand-in on the daemon's side: asks the tools spawner to start the real CLI, and mirrors it.

The SDK starts `cli_path` as the daemon's user with pipes on stdin/stdout/stderr. When the tools spawner
service runs (spawner.py, `aiwm-agentd-tools.service`), `cli_path` is this file: it connects to the spawner's
socket, hands over its three stdio descriptors (SCM_RIGHTS) with the CLI's argv, the allowed environment and
the per-child files (instruction, MCP configuration), and then only waits: the real CLI, started by the
spawner as the tools user, reads and writes the SDK's pipes directly. Its exit status becomes ours; a signal
we get (the SDK's terminate) is passed on to the CLI's process group; when we die, the spawner's end of the
connection closes and it kills that group, so nothing a turn started outlives it.

Standalone on purpose: run as `python3 -IS` (no site, no package import) it starts in ~15 ms and ~11 MiB
(`benchmarks/bench_sandbox.py`).
Only the variables in CHILD_ENV_NAMES cross the socket, so nothing else of the daemon's environment can.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

# Variables the CLI child gets (values from our environment: the daemon's options.env and the SDK's own).
CHILD_ENV_NAMES = (
    "PATH", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "HOME", "CLAUDE_CONFIG_DIR", "USER", "LOGNAME", "SHELL",
    "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_MAX_RETRIES", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER",
    "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_AGENT_SDK_VERSION", "CLAUDE_CODE_SDK_READS_SESSION_STATE",
    "CLAUDE_AGENT_SDK_CLIENT_APP", "CLAUDE_AGENT_SDK_DERIVED_CLIENT_APP",
)
# Set by options.env for this stand-in; never reach the CLI.
SOCKET_VAR = "AIWM_SANDBOX_SOCKET"
CLI_VAR = "AIWM_SANDBOX_CLI"
INSTRUCTION_VAR = "AIWM_SANDBOX_INSTRUCTION"
MCP_VAR = "AIWM_SANDBOX_MCP"
# Files the spawner writes (0600, as the tools user) into the child's run directory, which argv and the
# environment name with this prefix; the spawner replaces it with the real directory.
RUN_DIR_PREFIX = "@run@"
MAX_MESSAGE = 16 * 1024 * 1024
EXIT_NO_SPAWNER = 125  # the spawner refused, could not start the CLI, or went away


def encode(message: dict[str, Any]) -> bytes:
    """One frame: a 4-byte big-endian length, then the JSON document (UTF-8)."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"spawner message too large ({len(body)} bytes, at most {MAX_MESSAGE})")
    return struct.pack(">I", len(body)) + body


class FrameReader:
    """Split a byte stream into frames; `feed` returns the complete messages, ValueError on a bad frame."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while len(self._buffer) >= 4:
            (size,) = struct.unpack(">I", self._buffer[:4])
            if size > MAX_MESSAGE:
                raise ValueError(f"spawner frame too large ({size} bytes)")
            if len(self._buffer) < 4 + size:
                break
            body, self._buffer = self._buffer[4:4 + size], self._buffer[4 + size:]
            message = json.loads(body.decode("utf-8"))
            if not isinstance(message, dict):
                raise ValueError("spawner frame is not a JSON object")
            messages.append(message)
        return messages

    @property
    def pending(self) -> int:
        return len(self._buffer)


def spawn_request(environ: dict[str, str], args: list[str]) -> dict[str, Any]:
    """The spawn request for this invocation: argv, the allowed environment, the per-child files."""
    files: dict[str, str] = {}
    for variable, name in ((INSTRUCTION_VAR, "instruction.md"), (MCP_VAR, "mcp.json")):
        source = environ.get(variable, "")
        if source:
            with open(source, encoding="utf-8") as handle:
                files[name] = handle.read()
    env = {name: environ[name] for name in CHILD_ENV_NAMES if name in environ}
    return {"op": "spawn", "argv": [environ[CLI_VAR], *args], "env": env, "files": files}


def query_rss(path: str, timeout: float = 2.0) -> dict[int, int]:
    """Ask the spawner for the resident bytes of each running CLI's process group, keyed by the pid of its
    stand-in (the pid the SDK and the runner know). OSError/ValueError when it cannot answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(encode({"op": "rss"}))
        reader = FrameReader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ValueError("the spawner closed the connection without an answer")
            for message in reader.feed(data):
                return {int(pid): int(rss) for pid, rss in dict(message.get("rss") or {}).items()}


def _fail(text: str) -> int:
    with_newline = f"aiwm-agentd tools spawner: {text}\n"
    with contextlib.suppress(OSError):
        os.write(2, with_newline.encode("utf-8", "replace"))
    return EXIT_NO_SPAWNER


def main(args: list[str]) -> int:
    environ = dict(os.environ)
    try:
        request = spawn_request(environ, args)
        frame = encode(request)
    except (OSError, KeyError, ValueError) as exc:
        return _fail(f"cannot build the request: {type(exc).__name__}: {exc}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = False
    early: list[int] = []  # signals that came before the request was sent: passed on right after it

    def forward(signum: int, _frame: Any) -> None:
        if not sent:
            early.append(signum)
            return
        with contextlib.suppress(OSError):
            sock.sendall(encode({"op": "signal", "signal": signum}))

    # Before the request goes out: the SDK may terminate us the moment the CLI is up.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        sock.connect(environ.get(SOCKET_VAR, ""))
        socket.send_fds(sock, [frame[:4096]], [0, 1, 2])
        if len(frame) > 4096:
            sock.sendall(frame[4096:])
        sent = True
        for pending in early:
            sock.sendall(encode({"op": "signal", "signal": pending}))
    except OSError as exc:
        return _fail(f"cannot reach {environ.get(SOCKET_VAR, '')!r}: {exc.strerror or exc}")
    # Our copies of the pipes would keep the SDK's stdout open after the CLI exits; the CLI has its own.
    for fd in (0, 1):
        os.close(fd)
    reader = FrameReader()
    while True:
        try:
            data = sock.recv(65536)
        except InterruptedError:
            continue
        except OSError as exc:
            return _fail(f"connection lost: {exc.strerror or exc}")
        if not data:
            return _fail("the spawner closed the connection before the CLI ended")
        try:
            messages = reader.feed(data)
        except ValueError as exc:
            return _fail(str(exc))
        for message in messages:
            if "error" in message:
                return _fail(str(message["error"]))
            if "exit" in message:
                return int(message["exit"])
            if "signal" in message:  # killed by a signal: end the same way, as a shell would report it
                return 128 + int(message["signal"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
