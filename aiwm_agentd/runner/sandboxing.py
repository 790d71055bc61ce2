"""Everything the runner does with the tool sandbox, behind one small class: `RunnerSandbox`.

Whether the Claude CLI children run as the separate tools user is decided once per runner (`detect`, said once
in the log and in /health); every start writes the CLI launcher; when separated, the first child starts the
loopback Anthropic API proxy that swaps each child's own token for the real credential. Each new child gets its
`ChildSandbox` (a fresh proxy token when separated), its token is revoked when it closes, and its whole
process tree is killed through here. This is the only module of the runner that talks to aiwm_agentd.sandbox,
so how children are separated can change here without touching the runner's loop.

Thread use: `start`/`stop`/`set_upstream`/`health` run on the caller's thread, `child`/`revoke`/`kill_tree`
on the loop thread or its executor, as the runner did before this class existed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiwm_agentd.config import AgentConfig
from aiwm_agentd.runner.options import ChildSandbox, RunnerPaths, forget_child
from aiwm_agentd.sandbox import launcher
from aiwm_agentd.sandbox.identity import SandboxState, detect
from aiwm_agentd.sandbox.spawn_client import query_rss

if TYPE_CHECKING:
    from aiwm_agentd.sandbox.api_proxy import ApiProxy, Upstream

log = logging.getLogger("aiwm_agentd.runner")

SPAWNER_RSS_TTL = 1.0  # seconds a memory report of the tools spawner is reused


class RunnerSandbox:
    """The runner's tool sandbox: detection (once), launcher, API proxy, per-child tokens, process-tree kill."""

    def __init__(self) -> None:
        self._state: SandboxState | None = None
        self._api_proxy: ApiProxy | None = None
        self._paths: RunnerPaths | None = None
        self._config: AgentConfig | None = None
        self._spawner_rss: tuple[float, dict[int, int]] = (-1.0, {})

    def start(self, config: AgentConfig, paths: RunnerPaths) -> None:
        """Once per runner: decide whether the CLI can run as the tools user (said once: log and /health);
        each start: the launcher."""
        claude = config.claude
        self._paths = paths
        if self._state is None:
            self._state = detect(claude.tools_user, Path(claude.tools_dir), socket_path=claude.tools_socket)
            if self._state.separated:
                log.info("tool sandbox %s", self._state.detail)
            else:
                log.warning("tool sandbox %s: the Claude CLI and its tools run as the daemon's user and can read "
                            "its configuration and keys", self._state.detail)
        self._config = config
        launcher.write_launcher(paths.launcher, self._state)

    @property
    def api_proxy(self) -> ApiProxy | None:
        """The loopback API proxy once the first separated child started it (tests read its counters)."""
        return self._api_proxy

    def set_upstream(self, config: AgentConfig) -> None:
        """A new configuration: the API proxy forwards with its credential and base URL from now on."""
        self._config = config
        if self._api_proxy is not None:
            self._api_proxy.set_upstream(upstream(config))

    def child(self, label: str) -> ChildSandbox | None:
        """The sandbox inputs of a new CLI child: a fresh per-child token when separated."""
        state = self._state
        if state is None:
            return None
        if not state.separated or self._config is None:
            return ChildSandbox(state)
        proxy = self._api_proxy
        if proxy is None:
            # Started with the first CLI, not with the runner: an idle daemon that has not answered anybody yet
            # does not carry aiohttp (~10 MiB) for it.
            from aiwm_agentd.sandbox.api_proxy import ApiProxy

            proxy = self._api_proxy = ApiProxy(upstream(self._config))
            proxy.start()
        child_upstream = proxy.upstream()
        return ChildSandbox(state, token=proxy.issue(label), token_variable=child_upstream.child_variable,
                            proxy_url=proxy.url)

    def revoke(self, token: str) -> None:
        """A child is gone (or never started): its proxy token stops working, its MCP configuration goes."""
        if token and self._api_proxy is not None:
            self._api_proxy.revoke(token)
        if token and self._paths is not None:
            forget_child(self._paths, token)

    def extra_rss(self, pid: int) -> int:
        """Bytes of a CLI child the runner cannot see itself: with the tools spawner, `pid` is the stand-in and
        the CLI's process group lives in the spawner's unit, which reports it for all children at once; the
        answer is reused for a second unless it lacks `pid` (a CLI started since), so a budget check over every
        client costs one round trip. 0 otherwise or unknown."""
        state = self._state
        if state is None or not state.spawner:
            return 0
        when, figures = self._spawner_rss
        now = time.monotonic()
        if now - when > SPAWNER_RSS_TTL or pid not in figures:  # a CLI started since: ask again
            try:
                figures = query_rss(state.spawner_socket)
            except (OSError, ValueError) as exc:
                log.debug("the tools spawner did not report memory: %s", exc)
                figures = {}
            self._spawner_rss = (now, figures)
        return figures.get(pid, 0)

    def kill_tree(self, pid: int, leader_too: bool = True) -> None:
        """Kill a CLI child and every process of its turn (its process group, as the tools user if need be)."""
        state = self._state
        if state is None:
            if leader_too:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return
        launcher.kill_tree(pid, state, leader_too=leader_too)

    def health(self) -> dict[str, object] | None:
        """The /health `sandbox` field; None before the first start."""
        return self._state.health() if self._state is not None else None

    def stop(self, deadline: float) -> None:
        """Stop the API proxy (a later start makes a new one); detection is kept."""
        if self._api_proxy is not None:
            self._api_proxy.stop(deadline)
            self._api_proxy = None


def upstream(config: AgentConfig) -> Upstream:
    """Where the API proxy forwards, with which real credential."""
    from aiwm_agentd.sandbox.api_proxy import Upstream

    claude = config.claude
    return Upstream(claude.base_url, claude.api_key, claude.oauth_token, claude.mcp_servers)
