"""A conversation's kept-warm SDK client: open it (resuming the session), close it, and leave no CLI behind.

The SDK requires a client to stay in the task that connected it, so these coroutines run in the
conversation's worker task on the runner's loop thread. Opening waits for room (capacity.py), builds the
options (options.py) with the child's sandbox inputs (sandboxing.py) and reads the MCP status after connecting
(mcp_status.py). Closing kills the CLI's process tree when in a hurry, revokes its proxy token and frees its
room. Every CLI child's pid is remembered (under the runner's lock) until it is seen gone, so
`kill_leftover_children()` can guarantee none outlives the runner, even when its loop died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiwm_agentd import logs
from aiwm_agentd.config import AgentConfig
from aiwm_agentd.runner import failures
from aiwm_agentd.runner.capacity import Capacity
from aiwm_agentd.runner.conversation import Conversation, LoopRun
from aiwm_agentd.runner.failures import Failure
from aiwm_agentd.runner.mcp_status import McpStatus
from aiwm_agentd.runner.options import OptionInputs, RunnerPaths, build_options
from aiwm_agentd.runner.sandboxing import RunnerSandbox
from aiwm_agentd.runner.sessions import SessionStore

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

log = logging.getLogger("aiwm_agentd.runner")


class StartFailure(Exception):
    """The CLI could not be started for a turn; `failure` is what the user is told."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.code)
        self.failure = failure


class Clients:
    """Opens and closes the conversations' SDK clients and keeps track of their CLI processes."""

    def __init__(self, *, lock: threading.Lock, config: Callable[[], AgentConfig], generation: Callable[[], int],
                 paths: RunnerPaths, sessions: Callable[[], SessionStore | None], sandbox: RunnerSandbox,
                 capacity: Capacity, mcp: McpStatus,
                 client_factory: Callable[[], Callable[[ClaudeAgentOptions], Any] | None]) -> None:
        """`config()`, `generation()` (bumped by a configuration change), `sessions()` and `client_factory()`
        (None: the SDK's ClaudeSDKClient) are read when a client opens, so the runner's current ones apply."""
        self._lock = lock
        self._config = config
        self._generation = generation
        self._paths = paths
        self._sessions = sessions
        self._sandbox = sandbox
        self._capacity = capacity
        self._mcp = mcp
        self._client_factory = client_factory
        self._child_pids: set[int] = set()  # under `lock`

    async def connect(self, run: LoopRun, conv: Conversation) -> bool:
        """Connect a client for the conversation, resuming its session; True when a resume failed."""
        await self._capacity.reserve_client(run, conv)
        connected = False
        try:
            sessions = self._sessions()
            resume = sessions.get(str(conv.key)) if (sessions and self._config().claude.resume) else None
            try:
                await self._open(run, conv, resume)
                connected = True
                return False
            except Exception as exc:
                if resume is None:
                    raise
                first_line = (logs.mask(str(exc)).splitlines() or [type(exc).__name__])[0]
                log.warning("[%s] could not resume session %s (%s); starting a fresh one",
                            conv.key, resume, first_line)
                if sessions is not None:
                    sessions.delete(str(conv.key))
            await self._open(run, conv, None)
            connected = True
            return True
        except Exception as exc:
            failure = failures.classify(str(exc))
            if failure is failures.CRASHED:
                failure = failures.CANNOT_START
            log.error("[%s] could not start Claude Code: %s", conv.key,
                      logs.mask(f"{type(exc).__name__}: {exc}"))
            raise StartFailure(failure) from exc
        finally:
            if not connected:
                await self._capacity.unreserve_client(run)

    async def _open(self, run: LoopRun, conv: Conversation, resume: str | None) -> None:
        from claude_agent_sdk import ClaudeSDKClient

        key = conv.key

        def on_stderr(line: str) -> None:
            log.warning("[%s] claude: %s", key, logs.mask(line))

        child = self._sandbox.child(str(key))
        inputs = OptionInputs(resume=resume, stderr=on_stderr, hidden_tools=self._mcp.hidden_tools(),
                              sandbox=child)
        generation = self._generation()
        options = build_options(self._config(), self._paths, inputs)
        client = (self._client_factory() or ClaudeSDKClient)(options)
        try:
            await client.connect()
        except BaseException:
            self._forget_pid(client)
            if child is not None:
                self._sandbox.revoke(child.token)
            raise
        conv.client, conv.client_generation = client, generation
        conv.client_token = child.token if child is not None else ""
        conv.client_pid = client_pid(client)
        if conv.client_pid is not None:
            with self._lock:
                self._child_pids.add(conv.client_pid)
        if self._config().claude.mcp_servers:  # every client: the status is shown, the names guard the calls
            await self._mcp.discover(client, run)

    async def close(self, run: LoopRun, conv: Conversation, fast: bool = False) -> None:
        """Close the conversation's client, if any; `fast` kills its process tree first (the turn is
        abandoned anyway) instead of waiting up to 5 s for the CLI to exit on stdin EOF."""
        client, pid = conv.client, conv.client_pid
        if client is None:
            return
        conv.client, conv.client_pid = None, None
        token, conv.client_token = conv.client_token, ""
        if fast and pid is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._sandbox.kill_tree, pid)
        try:
            await asyncio.wait_for(asyncio.shield(client.disconnect()), timeout=20)
        except Exception as exc:
            log.warning("[%s] closing its client: %s", conv.key, logs.mask(str(exc)))
        if pid is not None:  # background jobs of its tools die with it (its process group)
            await asyncio.get_running_loop().run_in_executor(None, self._sandbox.kill_tree, pid, False)
        self._sandbox.revoke(token)
        if pid is not None and not pid_alive(pid):
            with self._lock:
                self._child_pids.discard(pid)
        self._capacity.forget_rss(conv)
        await self._capacity.unreserve_client(run)

    def _forget_pid(self, client: ClaudeSDKClient) -> None:
        pid = client_pid(client)
        if pid is not None and not pid_alive(pid):
            with self._lock:
                self._child_pids.discard(pid)

    def kill_leftover_children(self) -> None:
        """Kill every CLI child not seen gone (after the loop ended, or was abandoned or died)."""
        with self._lock:
            pids, self._child_pids = set(self._child_pids), set()
        for pid in pids:
            if pid_alive(pid):
                log.warning("killing a Claude Code process left behind (pid %d)", pid)
            self._sandbox.kill_tree(pid)  # also when /proc hides it (a tools-user process under ProtectProc=invisible)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def client_pid(client: ClaudeSDKClient) -> int | None:
    """The pid of the client's CLI child, None before it started."""
    # The SDK has no public accessor for its CLI child; we need the pid to guarantee none outlives us.
    process = getattr(getattr(client, "_transport", None), "_process", None)
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
