"""A streaming fake of the Anthropic Messages API on 127.0.0.1, for driving the real Claude Code CLI.

    fake = FakeAnthropic().start()        # random port; fake.url -> "http://127.0.0.1:PORT"
    fake.set_reply("hello")               # every turn answers "hello"
    fake.set_reply(delay=2.0)             # wait before the first byte
    fake.set_reply(hang=True)             # never answer (released by stop() / set_reply())
    fake.set_reply(status=529)            # an Anthropic-shaped error
    fake.set_handler(echo_handler)        # reply computed per request (see `echo_handler`)
    fake.requests                         # every request received (RecordedRequest), in order
    fake.stop()

Point the CLI at it with `ANTHROPIC_BASE_URL=fake.url` (or `ClaudeConfig.base_url`). The CLI calls
`POST /v1/messages?beta=true` with `"stream": true` and sometimes `HEAD /api/hello`; anything else gets 404.
Non-streaming `/v1/messages` calls get the same reply as one JSON message.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class FakeReply:
    text: str = "ok"
    delay: float = 0.0  # seconds before the response starts
    hang: bool = False  # accept the request and never answer (until stop() or a new reply is set)
    status: int = 200  # anything else: {"type": "error", "error": {...}} with this status
    error_type: str = "api_error"


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    received_at: float = field(default_factory=time.monotonic)

    @property
    def system_text(self) -> str:
        """The `system` field as one string (the CLI sends a list of text blocks)."""
        system = self.body.get("system") if isinstance(self.body, dict) else None
        if isinstance(system, str):
            return system
        if isinstance(system, list):
            return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
        return ""

    @property
    def tool_names(self) -> list[str]:
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        return [t.get("name", "") for t in tools or [] if isinstance(t, dict)]

    @property
    def user_texts(self) -> list[str]:
        """Text of every user message, system reminders left out (the conversation history)."""
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        texts: list[str] = []
        for message in messages or []:
            if isinstance(message, dict) and message.get("role") == "user":
                text = _message_text(message.get("content"))
                if text:
                    texts.append(text)
        return texts

    @property
    def last_user_text(self) -> str:
        """The last text block of the last user message (after an interrupt the CLI merges several)."""
        texts = self.user_texts
        return texts[-1].split("\n\n")[-1] if texts else ""


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return "" if content.lstrip().startswith("<system-reminder>") else content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            text = str(block.get("text", ""))
            if not text.lstrip().startswith("<system-reminder>"):
                parts.append(text)
    return "\n".join(parts)


Handler = Callable[[RecordedRequest], "FakeReply | str"]


def echo_handler(request: RecordedRequest) -> FakeReply:
    """Answers `echo: <last user message>`, so tests can match replies to messages."""
    return FakeReply(text=f"echo: {request.last_user_text}")


class FakeAnthropic:
    def __init__(self, reply: FakeReply | str = "ok") -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._reply = reply if isinstance(reply, FakeReply) else FakeReply(text=reply)
        self._handler: Handler | None = None
        self._release = threading.Event()  # set to free hanging requests
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.in_flight = 0  # /v1/messages requests being answered now
        self.max_in_flight = 0  # the most at any time since start() / reset()

    # -- control ---------------------------------------------------------------------------

    handler_class: type[BaseHTTPRequestHandler] = BaseHTTPRequestHandler  # set below: _RequestHandler

    def start(self) -> FakeAnthropic:
        fake = self

        class _Handler(self.handler_class):  # type: ignore[misc, name-defined]
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_reply(
        self,
        text: str = "ok",
        *,
        delay: float = 0.0,
        hang: bool = False,
        status: int = 200,
        error_type: str = "api_error",
    ) -> None:
        """The answer to every following request (clears a handler; frees requests left hanging)."""
        with self._lock:
            self._reply = FakeReply(text, delay, hang, status, error_type)
            self._handler = None
            self._release.set()
            self._release = threading.Event()

    def set_handler(self, handler: Handler) -> None:
        """Compute the answer per request; return a FakeReply or just the text."""
        with self._lock:
            self._handler = handler

    def reset(self) -> None:
        """Forget recorded requests and go back to answering "ok"."""
        self.set_reply()
        with self._lock:
            self._requests.clear()
            self.max_in_flight = self.in_flight

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def message_requests(self) -> list[RecordedRequest]:
        """Only the POST /v1/messages calls (what the model was asked)."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.message_requests()
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise TimeoutError(f"expected {count} message requests, got {len(self.message_requests())}")

    # -- used by the request handler ------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> tuple[FakeReply, threading.Event]:
        with self._lock:
            self._requests.append(request)
            handler, reply, release = self._handler, self._reply, self._release
        if handler is not None:
            result = handler(request)
            reply = result if isinstance(result, FakeReply) else FakeReply(text=result)
        return reply, release


class _RequestHandler(BaseHTTPRequestHandler):
    owner: FakeAnthropic
    # HTTP/1.0: one request per connection, the end of a stream is the end of the connection.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read(self) -> RecordedRequest:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        return RecordedRequest(self.command, parts.path, parts.query, headers, body)

    def do_HEAD(self) -> None:
        self.owner._record(self._read())
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.owner._record(self._read())
        self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})

    def do_POST(self) -> None:
        request = self._read()
        reply, release = self.owner._record(request)
        if request.path != "/v1/messages":
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}})
            return
        with self.owner._lock:
            self.owner.in_flight += 1
            self.owner.max_in_flight = max(self.owner.max_in_flight, self.owner.in_flight)
        try:
            if reply.hang:
                release.wait()
                return
            if reply.delay and release.wait(reply.delay):
                return
            body = request.body if isinstance(request.body, dict) else {}
            if reply.status != 200:
                self._send_json(reply.status, {
                    "type": "error", "error": {"type": reply.error_type, "message": "fake failure"},
                })
            elif body.get("stream"):
                self._stream(reply.text, str(body.get("model", "")))
            else:
                self._send_json(200, _message(reply.text, str(body.get("model", "")), "end_turn"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.owner._lock:
                self.owner.in_flight -= 1

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:20]}")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, text: str, model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:20]}")
        self.end_headers()
        start = _message("", model, None)
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": text}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": max(1, len(text.split()))}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def _message(text: str, model: str, stop_reason: str | None) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model or "claude-fake",
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1 if not text else max(1, len(text.split())),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }


def agent_config(state_dir: Any, base_url: str, instruction: str = "You are a test agent.",
                 **claude: Any) -> Any:
    """An AgentConfig (local mode, no bots) whose Claude runner talks to `base_url` (a FakeAnthropic)."""
    from pathlib import Path

    from aiwm_agentd.config import AgentConfig, ClaudeConfig, PlatformConfig

    fields: dict[str, Any] = {
        "model": "claude-haiku-4-5", "max_turns": 5, "permission_mode": "default", "resume": True,
        "oauth_token": "", "api_key": "sk-ant-fake-test-key-0123456789", "base_url": base_url, "cli_path": "",
        "tool_names": None, "allowed_functions": (), "mcp_servers": {}, "max_concurrency": 2,
        "idle_timeout": 60.0, "turn_timeout": 30.0, "max_clients": 4, "queue_limit": 10,
        "tools_socket": "",  # never the host's spawner; tests that want one pass theirs
    }
    fields.update(claude)
    off = {"enabled": False, "token": "", "target_ids": (), "bot_id": "", "require_mentions": True,
           "allow_direct_messages": False, "api_base_url": "", "gateway_url": ""}
    return AgentConfig(
        agent_id="", agent_name="test-agent", instruction=instruction, source="local", controller_version="",
        claude=ClaudeConfig(**fields), discord=PlatformConfig(platform="discord", **off),
        telegram=PlatformConfig(platform="telegram", **off), state_dir=Path(state_dir), provenance=(), warnings=(),
    )


FakeAnthropic.handler_class = _RequestHandler  # subclasses (scripted tool calls) swap in their own
