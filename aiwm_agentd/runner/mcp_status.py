"""The MCP servers as the Claude CLI reports them: their state, their tool names, and what the model can call.

The CLI connects MCP servers in the background after a client connected, so the runner reads
`get_mcp_status()` right after every connect and, while a server is still `pending`, again every
MCP_STATUS_POLL seconds for up to MCP_STATUS_WAIT, without delaying the turn. What it learns serves two ends:
the tool names of a server with only some whitelisted tools are hidden from later clients (options.py), and a
server the CLI could not use is logged once per change and shown (/health, the controller), instead of the
agent silently having none of its tools.

Reads and polls run on the runner's loop thread; `status` and `callable` are replaced whole (never mutated),
so other threads read them safely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiwm_agentd import logs
from aiwm_agentd.config import ClaudeConfig
from aiwm_agentd.runner.conversation import LoopRun
from aiwm_agentd.runner.options import plan_tools

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeSDKClient

log = logging.getLogger("aiwm_agentd.runner")

MCP_STATUS_POLL = 0.5  # seconds between MCP status reads while a server is still pending
MCP_STATUS_WAIT = 30.0  # how long a pending server is watched after a client connected


class McpStatus:
    """What the CLI last said about each MCP server, and the MCP tools the model can really call."""

    def __init__(self, claude: Callable[[], ClaudeConfig]) -> None:
        """`claude()` is the current Claude configuration (its tool whitelist decides what is hidden)."""
        self._claude = claude
        self.status: dict[str, str] = {}  # server -> "connected" / "failed" / "pending" / ...
        self.callable: tuple[str, ...] = ()
        self._discovered: dict[str, tuple[str, ...]] = {}  # server -> its full tool names (loop thread)
        self._logged: dict[str, str] = {}

    def hidden_tools(self) -> list[str]:
        """The tools a new client must not offer, given the whitelist and the tool names learnt so far."""
        return plan_tools(self._claude()).hidden_tools(self._discovered)

    async def discover(self, client: ClaudeSDKClient, run: LoopRun) -> None:
        """Read the MCP status now and, while a server is still `pending`, keep polling it in the background
        (a task of `run`) for up to MCP_STATUS_WAIT."""
        if await self.read(client):
            run.spawn(asyncio.get_running_loop().create_task(self._poll(client)))

    async def _poll(self, client: ClaudeSDKClient) -> None:
        deadline = time.monotonic() + MCP_STATUS_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(MCP_STATUS_POLL)
            if not await self.read(client):
                return

    async def read(self, client: ClaudeSDKClient) -> bool:
        """Learn the MCP servers' state and tool names (a server that rejected e.g. `notifications/initialized`
        shows as failed); True while some server is still pending."""
        try:
            status = await asyncio.wait_for(client.get_mcp_status(), timeout=5)
        except Exception as exc:
            log.debug("MCP status unavailable: %s", logs.mask(str(exc)))
            return False
        states = dict(self.status)
        for server in status.get("mcpServers", []):
            if not isinstance(server, dict):
                continue
            name = str(server.get("name", ""))
            states[name] = str(server.get("status") or "unknown")
            names = tuple(str(t.get("name", "")) for t in server.get("tools") or [] if isinstance(t, dict))
            if names:
                self._discovered[name] = tuple(
                    n if n.startswith("mcp__") else f"mcp__{name}__{n}" for n in names)
            self._log_state(name, states[name], len(names))
        hidden = set(self.hidden_tools())
        self.status = states
        self.callable = tuple(sorted(
            t for server, tools in self._discovered.items() if states.get(server) == "connected"
            for t in tools if t not in hidden and f"mcp__{server}" not in hidden))
        return any(state == "pending" for state in states.values())

    def _log_state(self, server: str, state: str, tools: int) -> None:
        """Once per change of a server's state."""
        if self._logged.get(server) == state or state == "pending":
            return
        self._logged[server] = state
        if state == "connected":
            log.info("MCP server %s connected (%d tools)", server, tools)
        else:
            log.warning("MCP server %s is %s: the model has none of its tools (check the server URL and that "
                        "it accepts the agent token)", server, state)
