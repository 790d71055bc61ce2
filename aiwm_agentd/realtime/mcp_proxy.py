"""A loopback proxy in front of the controller's MCP servers: the agent's tools work against every controller.

Why: the live upstream controller (hydra-services HEAD) answers the client's `notifications/initialized` with
HTTP 400 ("id should not be empty"); the Claude CLI then marks the `Builtin` server failed and the model has
none of the AIWM tools. The proxy forwards every request to the controller with the agent's *current* JWT and
answers a notification that the controller rejects with 202 itself (a notification has no answer to lose), so
the quirk is absorbed on our side. It also keeps the JWT out of the CLI's configuration: the CLI presents a
per-daemon secret that only this proxy accepts; the secret carries a generation suffix that changes with the
token, so a token change still gives new turns a fresh MCP session (spec/aiwm-realtime.md section 5).

Requests and responses are streamed (Streamable HTTP answers with JSON or an SSE stream); it listens on
127.0.0.1 only, on a port of its own choosing.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

log = logging.getLogger("aiwm_agentd.realtime.mcp_proxy")

FORWARD_REQUEST = ("content-type", "accept", "mcp-session-id", "mcp-protocol-version", "last-event-id")
FORWARD_RESPONSE = ("content-type", "mcp-session-id", "cache-control")
MAX_BODY = 4 * 1024 * 1024
READ_TIMEOUT = 300.0  # an SSE stream or a long tool call may be quiet this long


class McpProxy:
    def __init__(self, token: Callable[[], str], verify: bool | str = True) -> None:
        self._token = token
        self._secret = secrets.token_urlsafe(24)
        self._routes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._http = requests.Session()
        self._http.trust_env = False
        self._verify = verify
        self.absorbed = 0  # notifications the controller rejected and the proxy answered
        self.permission_problem = ""  # a tool call the controller refused for lack of permission (viewer role)
        self._absorbed_logged = False
        proxy = self

        class _Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        """Within milliseconds: serve_forever() notices a shutdown only at its next poll (0.5 s, kept long so
        the idle daemon does not wake for it), so a connection wakes it at once."""
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        host, port = self._server.server_address[:2]
        with contextlib.suppress(OSError), socket.create_connection((str(host), int(port)), timeout=0.2):
            pass
        stopper.join(1.0)
        self._server.server_close()
        self._http.close()

    def rewrite(self, servers: Mapping[str, Any], generation: int) -> dict[str, Any]:
        """`servers` (the SDK's `mcp_servers` form) with every HTTP server reached through the proxy."""
        result: dict[str, Any] = {}
        routes: dict[str, str] = {}
        for name, spec in servers.items():
            if not isinstance(spec, Mapping) or spec.get("type") != "http" or not spec.get("url"):
                result[name] = spec
                continue
            routes[name] = str(spec["url"])
            headers = {k: v for k, v in (spec.get("headers") or {}).items() if k.lower() != "authorization"}
            headers["Authorization"] = f"Bearer {self._secret}.{generation}"
            result[name] = {**spec, "url": f"{self.url}/mcp/{name}", "headers": headers}
        with self._lock:
            self._routes.update(routes)
        return result

    def route(self, name: str) -> str | None:
        with self._lock:
            return self._routes.get(name)

    def authorised(self, header: str) -> bool:
        given = header[7:].split(".", 1)[0] if header.lower().startswith("bearer ") else ""
        return bool(given) and hmac.compare_digest(given.encode(), self._secret.encode())

    def note_absorbed(self, status: int, method: str) -> None:
        self.absorbed += 1
        if not self._absorbed_logged:
            self._absorbed_logged = True
            log.info("the controller's MCP server rejects notifications (HTTP %s on %s); the MCP proxy answers "
                     "them itself so the tools stay usable", status, method or "a notification")


    def note_refused_tool(self, body: bytes, answer: bytes) -> None:
        """A `tools/call` answered with a permission error: a configuration problem, reported once."""
        try:
            request, result = json.loads(body), json.loads(answer).get("result")
        except (ValueError, AttributeError):
            return
        if not isinstance(result, dict) or not result.get("isError") or not isinstance(request, dict):
            return
        text = " ".join(str(c.get("text", "")) for c in result.get("content") or [] if isinstance(c, dict))
        if "permission" not in text.lower() or self.permission_problem:
            return
        tool = str((request.get("params") or {}).get("name") or "a tool")
        self.permission_problem = f"the controller refused {tool}: {text[:200]}"
        log.error("%s; give the agent a role that may update work (e.g. organization.editor) on the controller",
                  self.permission_problem)


def _is_tool_call(body: bytes) -> bool:
    return b'"tools/call"' in body


def _notification_method(body: bytes) -> str | None:
    """The method of a JSON-RPC notification (a message without an id), else None."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if isinstance(message, dict) and "id" not in message and isinstance(message.get("method"), str):
        return str(message["method"])
    return None


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: McpProxy
    protocol_version = "HTTP/1.0"  # the end of a streamed answer is the end of the connection

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._forward("POST")

    def do_GET(self) -> None:
        self._forward("GET")

    def do_DELETE(self) -> None:
        self._forward("DELETE")

    def _forward(self, method: str) -> None:
        proxy = self.owner
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        upstream = proxy.route(parts[1]) if len(parts) == 2 and parts[0] == "mcp" else None
        if upstream is None or not proxy.authorised(self.headers.get("authorization", "")):
            self._reply(404 if upstream is None else 401, b"")
            return
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._reply(413, b"")
            return
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k in FORWARD_REQUEST if (v := self.headers.get(k))}
        headers["Authorization"] = f"Bearer {proxy._token()}"
        try:
            response = proxy._http.request(method, upstream, data=body or None, headers=headers, stream=True,
                                           timeout=(10, READ_TIMEOUT), verify=proxy._verify,
                                           allow_redirects=False)
        except requests.RequestException as exc:
            log.debug("MCP proxy: upstream failed: %s", type(exc).__name__)
            self._reply(502, b"")
            return
        with response:
            notification = _notification_method(body) if method == "POST" else None
            if notification is not None and 400 <= response.status_code < 500 \
                    and response.status_code not in (401, 403, 404):
                proxy.note_absorbed(response.status_code, notification)
                self._reply(202, b"")
                return
            self.send_response(response.status_code)
            for key in FORWARD_RESPONSE:
                if key in response.headers:
                    self.send_header(key, response.headers[key])
            self.end_headers()
            if _is_tool_call(body) and response.headers.get("content-type", "").startswith("application/json"):
                answer = response.content[:MAX_BODY]  # a JSON answer is one small document: look at it
                proxy.note_refused_tool(body, answer)
                self.wfile.write(answer)
                return
            try:
                for chunk in response.iter_content(chunk_size=None):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (OSError, requests.RequestException):
                pass  # the CLI or the controller went away mid-stream

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)
