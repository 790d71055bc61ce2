"""An MCP-ish HTTP server on 127.0.0.1 (aiohttp, a thread of its own) that records what it was sent.

    server = FakeMcpServer().start()      # server.url -> "http://127.0.0.1:PORT"
    server.requests                       # (method, path, query, headers with lower-case names, body)
    server.release.set()                  # lets a held SSE stream send its second event
    server.stop()

Streamable HTTP at `/mcp`: POST `initialize` -> JSON with `mcp-session-id: sess-1`; POST `tools/call` -> an
SSE answer whose second event waits for `release` (so a test sees whether the first arrives unbuffered);
any other POST -> 202; GET -> an SSE stream with one event, then held until `release`; DELETE -> 200.
The old SSE transport at `/sse`: `event: endpoint` naming `/messages?session_id=abc`, then held until
`release`; POST `/messages` -> 202. `/other` answers 200 (a path the proxy must never forward to).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class McpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


class FakeMcpServer:
    def __init__(self) -> None:
        self.requests: list[McpRequest] = []
        self.release = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-mcp", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeMcpServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _held_event(self, response: web.StreamResponse, data: str) -> None:
        await asyncio.to_thread(self.release.wait, 10)
        await response.write(f"event: message\ndata: {data}\n\n".encode())

    async def _sse(self, request: web.Request, first: bytes, then: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache",
                                               "mcp-session-id": "sess-1"})
        await response.prepare(request)
        await response.write(first)
        await self._held_event(response, then)
        await response.write_eof()
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(McpRequest(request.method, request.path, request.query_string,
                                        {k.lower(): v for k, v in request.headers.items()}, body))
        if request.path == "/mcp":
            return await self._streamable(request, body)
        if request.path == "/sse" and request.method == "GET":
            return await self._sse(request, b"event: endpoint\r\ndata: /messages?session_id=abc\r\n\r\n",
                                   '{"jsonrpc":"2.0","id":1,"result":{}}')
        if request.path == "/messages" and request.method == "POST":
            return web.Response(status=202)
        if request.path == "/other":
            return web.Response(text="the rest of the controller's API")
        return web.Response(status=404)

    async def _streamable(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "DELETE":
            return web.Response(status=200)
        if request.method == "GET":
            return await self._sse(request, b"event: message\ndata: {\"first\":true}\n\n", '{"second":true}')
        message: Any = json.loads(body or b"{}")
        method = message.get("method") if isinstance(message, dict) else None
        if method == "initialize":
            return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "result": {
                "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                "serverInfo": {"name": "fake", "version": "1"}}}, headers={"mcp-session-id": "sess-1"})
        if method == "tools/call":
            return await self._sse(request, b'event: message\ndata: {"progress":1}\n\n',
                                   json.dumps({"jsonrpc": "2.0", "id": message.get("id"),
                                               "result": {"content": [{"type": "text", "text": "done"}]}}))
        return web.Response(status=202)
