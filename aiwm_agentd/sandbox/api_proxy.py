"""The Anthropic API on loopback for the sandboxed CLI: per-child tokens in, the real credential out.

The CLI child never holds the Anthropic key or OAuth token. It gets `ANTHROPIC_BASE_URL=<this proxy>` and, in
the variable of the credential kind the daemon has (`ANTHROPIC_API_KEY` -> `x-api-key`, or
`CLAUDE_CODE_OAUTH_TOKEN` -> `Authorization: Bearer`, so the CLI sends the headers that kind needs), a random
token issued for that child and revoked when its client closes. The proxy accepts a request only with a live
token, replaces it with the real credential and forwards the request to the real API (`ANTHROPIC_BASE_URL` of
the daemon or https://api.anthropic.com), streaming the answer back (SSE) unchanged. A token the model copies
out of its environment is worth nothing once its child is gone.

The same token also opens `/mcp/<server>/...`: the MCP servers that carry a credential of the daemon's (the
agent JWT), which the child's MCP configuration names through this proxy (mcp_routes.py): the request is
forwarded with the server's current headers from `Upstream.mcp_servers`, so a refreshed JWT is used at once.

aiohttp on a `LoopThread`; listens on 127.0.0.1 on a port chosen at construction, so `url` is known at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from aiwm_agentd.loopthread import LoopThread
from aiwm_agentd.sandbox import mcp_routes

log = logging.getLogger("aiwm_agentd.sandbox.api_proxy")

DEFAULT_UPSTREAM = "https://api.anthropic.com"
MAX_BODY = 64 * 1024 * 1024
# Never forwarded: hop-by-hop headers, the caller's credentials and what aiohttp recomputes.
_DROP_REQUEST = frozenset({
    "host", "x-api-key", "authorization", "content-length", "connection", "keep-alive", "transfer-encoding",
    "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection",
})
_DROP_RESPONSE = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "trailer",
                            "upgrade"})


@dataclass(frozen=True)
class Upstream:
    base_url: str
    api_key: str
    oauth_token: str
    # The SDK `mcp_servers` of the current configuration (Authorization = the current JWT): where and with
    # which headers `/mcp/<server>/...` is forwarded.
    mcp_servers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def child_variable(self) -> str:
        """The environment variable the child's token goes into: the kind of credential we hold."""
        return "ANTHROPIC_API_KEY" if self.api_key or not self.oauth_token else "CLAUDE_CODE_OAUTH_TOKEN"


class ApiProxy:
    """Issue/revoke per-child tokens; serve until `stop()`."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._tokens: dict[str, str] = {}  # token -> label (the conversation), for logs
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._port = int(self._sock.getsockname()[1])
        self._stopped: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = LoopThread("api-proxy", request_stop=self._request_stop)
        self.refused = 0
        self.forwarded = 0
        self.mcp = mcp_routes.McpRoutes()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def set_upstream(self, upstream: Upstream) -> None:
        with self._lock:
            self._upstream = upstream

    def upstream(self) -> Upstream:
        with self._lock:
            return self._upstream

    def issue(self, label: str) -> str:
        token = f"aiwm-child-{secrets.token_urlsafe(32)}"
        with self._lock:
            self._tokens[token] = label
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def live_tokens(self) -> int:
        with self._lock:
            return len(self._tokens)

    def accepts(self, token: str) -> bool:
        if not token:
            return False
        with self._lock:
            known = list(self._tokens)
        return any(hmac.compare_digest(token.encode(), k.encode()) for k in known)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start(self._main)

    def stop(self, deadline: float | None = None) -> None:
        self._thread.stop(time.monotonic() + 5 if deadline is None else deadline)
        self._sock.close()

    def _request_stop(self, deadline: float) -> None:
        if self._stopped is not None:
            self._stopped.set()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # In-flight requests are cancelled 0.5 s into a stop (their CLIs are being ended anyway): with aiohttp's
        # 60 s default the stop deadline cancelled them half-torn-down, and aiohttp logged tracebacks.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        async with aiohttp.ClientSession(trust_env=True, auto_decompress=False,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_connect=30,
                                                                       sock_read=600)) as session:
            self._session = session
            await web.SockSite(runner, self._sock).start()
            try:
                await self._stopped.wait()
            finally:
                await runner.cleanup()

    # ------------------------------------------------------------------------------ requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        given = request.headers.get("x-api-key", "")
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not self.accepts(given):
            self.refused += 1
            return web.json_response({"type": "error", "error": {
                "type": "authentication_error", "message": "unknown or expired per-child token"}}, status=401)
        upstream = self.upstream()
        assert self._session is not None
        if request.rel_url.raw_path.startswith(mcp_routes.PREFIX):
            return await self.mcp.forward(request, self._session, upstream.mcp_servers)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        if upstream.api_key:
            headers["x-api-key"] = upstream.api_key
        elif upstream.oauth_token:
            headers["Authorization"] = f"Bearer {upstream.oauth_token}"
        target = (upstream.base_url or DEFAULT_UPSTREAM).rstrip("/") + request.rel_url.raw_path_qs
        body = await request.read()
        forwarded, response = await mcp_routes.relay(request, self._session, target, headers, body,
                                                     drop=_DROP_RESPONSE)
        if response is None:
            return web.json_response({"type": "error", "error": {
                "type": "api_error", "message": "the daemon could not reach the Anthropic API"}}, status=502)
        if forwarded:
            self.forwarded += 1
        return response  # cut mid-stream when not forwarded: the CLI sees it and retries
