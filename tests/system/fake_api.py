"""A loopback HTTPS stand-in for the Anthropic Messages API, run INSIDE the test container.

    python3 fake_api.py CERT KEY PORT LOG

Answers every `POST /v1/messages` with the reply "pong" (SSE when the request asks to stream, JSON
otherwise), 404 elsewhere, and appends one line per request to LOG. Standard library only: the
container's /usr/bin/python3 runs it.
"""

from __future__ import annotations

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = {
    "id": "msg_systest",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


def sse_events() -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": MESSAGE}),
        ("content_block_start",
         {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta",
         {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "pong"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 1}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _log(self, status: int) -> None:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(f"{self.command} {self.path} {status}\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.startswith("/v1/messages"):
            self._reply(404, b'{"type":"error","error":{"type":"not_found_error","message":"no"}}')
            return
        try:
            stream = bool(json.loads(body or b"{}").get("stream"))
        except ValueError:
            stream = False
        if stream:
            self._reply(200, sse_events(), "text/event-stream")
        else:
            message = dict(MESSAGE, content=[{"type": "text", "text": "pong"}], stop_reason="end_turn")
            self._reply(200, json.dumps(message).encode())

    def do_GET(self) -> None:
        self._reply(404, b"{}")

    do_HEAD = do_GET

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    cert, key, port, LOG = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
