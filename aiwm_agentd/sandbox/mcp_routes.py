"""The controller's MCP servers for the sandboxed CLI: the child's token in, the daemon's credential out.

Why: the MCP configuration the CLI reads is copied into the tools' workspace, so whatever credential it holds
the tools can read. An entry the daemon decorated with a credential of its own (the agent JWT on the
controller's servers, or the secret of the realtime MCP proxy that adds the JWT itself) is therefore given
to a separated child as `http://127.0.0.1:<api proxy>/mcp/<server>/<original path>` with
`Authorization: Bearer <the child's token>` (`child_servers`). The API proxy (api_proxy.py) checks that
token exactly as for the Anthropic API (same issue/revoke), then `McpRoutes.forward` sends the request to
the server's *current* URL with the server's *current* headers from the configuration (a refreshed JWT
reaches the next request without touching the child), and streams the answer back.

Both MCP HTTP transports pass: Streamable HTTP (POST answered with JSON or SSE, GET SSE stream, DELETE;
`mcp-session-id`, `mcp-protocol-version`, `accept`, `last-event-id` both ways) and the older SSE transport,
whose `endpoint` event names the URL to POST to: it is rewritten to the proxy's route, and only the
configured path and the paths a server announced that way are forwarded (the JWT does not open the rest of
the controller's API to the tools).

Entries without a daemon credential (third-party servers keep their own headers, stdio servers) are left
as they are. The rule (`carries_daemon_credential`) errs towards proxying: a third-party entry that looks
like the daemon's (a bearer JWT, a loopback URL) is proxied too, which only hides its header from the tools;
the server still gets exactly the headers configured for it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from aiwm_agentd.config.parsers import is_loopback_host
from aiwm_agentd.config.snapshot import BUILTIN_SERVER

if TYPE_CHECKING:  # aiohttp only where the proxy runs: runner/options.py imports the pure parts always
    import aiohttp
    from aiohttp import web

log = logging.getLogger("aiwm_agentd.sandbox.mcp_routes")

PREFIX = "/mcp/"
TRANSPORTS = ("http", "sse")
MAX_BODY = 4 * 1024 * 1024
MAX_EVENT = 1024 * 1024  # an SSE event longer than this is passed on unparsed (no endpoint is that long)
MAX_ANNOUNCED = 256  # paths remembered per server from `endpoint` events (one per SSE session)
# From the CLI to the server (its credentials are replaced, hop-by-hop headers are not ours to pass).
FORWARD_REQUEST = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version", "last-event-id",
                   "user-agent", "cache-control")
DROP_RESPONSE = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "trailer",
                           "upgrade", "www-authenticate"})
_BEARER_JWT_RE = re.compile(r"(?i)^\s*bearer\s+eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\s*$")
_EVENT_END_RE = re.compile(rb"\r?\n\r?\n")


def _authorization(spec: Mapping[str, Any]) -> str:
    headers = spec.get("headers")
    if not isinstance(headers, Mapping):
        return ""
    return next((str(v) for k, v in headers.items() if str(k).lower() == "authorization"), "")


def carries_daemon_credential(name: str, spec: Any) -> bool:
    """Whether this entry's Authorization is one the daemon put there (so the tools must not see it).

    The config layer (config/snapshot.mcp_with_token) gives the agent JWT only to the `Builtin` entry and to
    servers with the controller's origin; the realtime MCP proxy (realtime/mcp_proxy.py) replaces that with
    its own per-daemon secret on a loopback URL. So: an HTTP/SSE entry with an Authorization header that is
    `Builtin`, or a bearer JWT, or on a loopback address."""
    if not isinstance(spec, Mapping) or spec.get("type") not in TRANSPORTS or not isinstance(spec.get("url"), str):
        return False
    if not _authorization(spec):
        return False
    if name == BUILTIN_SERVER or _BEARER_JWT_RE.match(_authorization(spec)):
        return True
    try:
        host = urlsplit(str(spec["url"])).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def route_path(name: str, path: str, query: str = "") -> str:
    """The proxy's path for `path` (raw, as on the wire) of server `name`."""
    return f"{PREFIX}{quote(name, safe='')}{path or '/'}" + (f"?{query}" if query else "")


def child_servers(servers: Mapping[str, Any], token: str, proxy_url: str,
                  carries: Callable[[str, Any], bool] = carries_daemon_credential) -> dict[str, Any]:
    """The MCP servers as one separated child sees them: daemon-credential entries through the proxy with
    the child's token and no other header (the proxy adds the configured ones), the rest unchanged."""
    result: dict[str, Any] = {}
    for name, spec in servers.items():
        if not token or not carries(name, spec):
            result[name] = spec
            continue
        parts = urlsplit(str(spec["url"]))
        result[name] = {**{k: v for k, v in spec.items() if k not in ("url", "headers")},
                        "url": proxy_url.rstrip("/") + route_path(name, parts.path, parts.query),
                        "headers": {"Authorization": f"Bearer {token}"}}
    return result


@dataclass(frozen=True)
class Target:
    """Where one request goes: the server's URL (path from the request) and its configured headers."""

    name: str
    url: str
    headers: dict[str, str]
    transport: str


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class McpRoutes:
    """Resolves `/mcp/<server>/<path>` against the current servers; forwards and streams."""

    def __init__(self, carries: Callable[[str, Any], bool] = carries_daemon_credential) -> None:
        self._carries = carries
        self._lock = threading.Lock()
        # (server, scheme, netloc) -> upstream paths its `endpoint` events announced (old SSE transport)
        self._announced: dict[tuple[str, str, str], OrderedDict[str, None]] = {}
        self.forwarded = 0
        self.not_found = 0

    def announce(self, name: str, url: str) -> None:
        scheme, netloc = _origin(url)
        with self._lock:
            paths = self._announced.setdefault((name, scheme, netloc), OrderedDict())
            paths[urlsplit(url).path] = None
            paths.move_to_end(urlsplit(url).path)
            while len(paths) > MAX_ANNOUNCED:
                paths.popitem(last=False)

    def resolve(self, servers: Mapping[str, Any], raw_path: str, query: str) -> Target | None:
        """The target of a request for `raw_path` (beginning with PREFIX), or None: an unknown server, one
        without a daemon credential, or a path it neither configured nor announced."""
        name_part, _, rest = raw_path[len(PREFIX):].partition("/")
        name = unquote(name_part)
        spec = servers.get(name)
        if not self._carries(name, spec):
            return None
        assert isinstance(spec, Mapping)
        configured = urlsplit(str(spec["url"]))
        path = "/" + rest
        if path != (configured.path or "/"):
            key = (name, configured.scheme.lower(), configured.netloc.lower())
            with self._lock:
                if path not in self._announced.get(key, ()):
                    return None
        url = urlunsplit((configured.scheme, configured.netloc, path, query, ""))
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        return Target(name, url, headers, str(spec.get("type")))

    async def forward(self, request: web.Request, session: aiohttp.ClientSession,
                      servers: Mapping[str, Any]) -> web.StreamResponse:
        """Forward an authorised request (the caller checked the child's token) and stream the answer."""
        from aiohttp import web

        target = self.resolve(servers, request.rel_url.raw_path, request.rel_url.raw_query_string)
        if target is None:
            self.not_found += 1
            return web.json_response({"error": "no such MCP server for this agent"}, status=404)
        if (request.content_length or 0) > MAX_BODY:
            return web.json_response({"error": "request too large"}, status=413)
        headers = {k: v for k in FORWARD_REQUEST if (v := request.headers.get(k))}
        headers.update(target.headers)  # the configured ones: the current JWT (or MCP proxy secret) among them
        headers["Accept-Encoding"] = "identity"  # SSE is read event by event (endpoint rewriting), unzipped
        body = await request.read()
        forwarded, response = await relay(request, session, target.url, headers, body, drop=DROP_RESPONSE,
                                          rewriter=lambda answer: EndpointRewriter(target, self.announce) if (
                                              target.transport == "sse" and answer.headers.get(
                                                  "content-type", "").startswith("text/event-stream")) else None)
        if response is None:
            return web.json_response({"error": f"the daemon could not reach MCP server {target.name}"},
                                     status=502)
        if forwarded:
            self.forwarded += 1
        return response  # cut mid-stream when not forwarded: the CLI reconnects


class Rewriter(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


async def relay(request: web.Request, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str],
                body: bytes, *, drop: frozenset[str],
                rewriter: Callable[[aiohttp.ClientResponse], Rewriter | None] | None = None,
                ) -> tuple[bool, web.StreamResponse | None]:
    """Send the request upstream and stream the answer back chunk by chunk (SSE unbuffered), without the
    `drop` headers; `rewriter(answer)` may transform the body. (True, response) when the whole answer was
    passed on; (False, response) when the upstream failed mid-stream (the caller sees a cut stream and
    retries); (False, None) when it failed before answering (the caller answers 502). Shared by the Anthropic
    API route and the MCP routes."""
    import aiohttp
    from aiohttp import web

    response: web.StreamResponse | None = None
    try:
        async with session.request(request.method, url, headers=dict(headers), data=body or None,
                                   allow_redirects=False) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for key, value in answer.headers.items():
                if key.lower() not in drop:
                    response.headers.add(key, value)
            await response.prepare(request)
            transform = rewriter(answer) if rewriter is not None else None
            async for chunk in answer.content.iter_any():
                out = transform.feed(chunk) if transform is not None else chunk
                if out:
                    await response.write(out)
            if transform is not None and (rest := transform.flush()):
                await response.write(rest)
            await response.write_eof()
            return True, response
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        log.warning("upstream %s %s failed: %s", request.method, urlsplit(url).netloc, type(exc).__name__)
        return False, response if response is not None and response.prepared else None


class EndpointRewriter:
    """SSE events passed on whole, as each completes (a client acts on an event only at its end anyway), with
    the old SSE transport's `endpoint` event pointed back at the proxy and its path remembered as allowed."""

    def __init__(self, target: Target, announce: Callable[[str, str], None]) -> None:
        self._target = target
        self._announce = announce
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self._pending += chunk
        out: list[bytes] = []
        while (end := _EVENT_END_RE.search(self._pending)) is not None:
            out.append(self._event(self._pending[:end.end()]))
            self._pending = self._pending[end.end():]
        if len(self._pending) > MAX_EVENT:
            out.append(self._pending)
            self._pending = b""
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def _event(self, block: bytes) -> bytes:
        lines = block.split(b"\n")
        if not any(line.rstrip(b"\r").replace(b" ", b"") == b"event:endpoint" for line in lines):
            return block
        rewritten = []
        for line in lines:
            bare = line.rstrip(b"\r")
            if bare.startswith(b"data:"):
                value = bare[5:].removeprefix(b" ").decode("utf-8", "replace")
                line = b"data: " + self._rewrite(value).encode() + line[len(bare):]
            rewritten.append(line)
        return b"\n".join(rewritten)

    def _rewrite(self, value: str) -> str:
        absolute = urljoin(self._target.url, value)
        if _origin(absolute) != _origin(self._target.url):
            return value  # another origin: not the server the daemon vouches for
        self._announce(self._target.name, absolute)
        parts = urlsplit(absolute)
        return route_path(self._target.name, parts.path, parts.query)
