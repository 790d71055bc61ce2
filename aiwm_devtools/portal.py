"""The dev controller's portal socket: a real python-socketio server speaking the v4/v5/v6 dialects.

What an agent meets on a real controller (spec/aiwm-realtime.md): the handshake's `auth.token` is checked
against the dev controller's JWTs, and a bad token is *accepted and then disconnected at once* (not a
`connect_error`); v4 creates a conversation per agent and broadcasts `presence:update`, echoes the agent's own
messages back as `message:new` with `owner.agentId`; v5 sends the slim payload with `platform`; v6 lives on
namespace `/` under `/agent/socket.io`, takes `agent:heartbeat` with an ack and sends `agent:command`.
`refuse_sends` plays the v4 viewer role ("You do not have permission to create.").

It runs aiohttp + socketio.AsyncServer on its own loopback port in a thread of its own; every method here is
thread-safe (the tests and the admin HTTP routes call it from other threads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

import socketio
from aiohttp import web

if TYPE_CHECKING:
    from aiwm_devtools.devcontroller import DevController

LOG = logging.getLogger("aiwm_agentd.devcontroller.portal")

DIALECTS = {"v4": ("/ws", "/socket.io"), "v5": ("/ws/chat", "/socket.io"), "v6": ("/", "/agent/socket.io")}
PERMISSION_ERROR = "You do not have permission to create."


def _object_id() -> str:
    return secrets.token_hex(12)


class PortalServer:
    def __init__(self, controller: DevController, dialect: str = "v5", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown portal dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
        self.controller = controller
        self.dialect = dialect
        self.namespace, self.path = DIALECTS[dialect]
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self.refuse_sends = False
        self._sent: list[dict[str, Any]] = []
        self._typing: list[dict[str, Any]] = []
        self._heartbeats: list[dict[str, Any]] = []
        self._events: list[tuple[str, Any]] = []  # what the agent received, in order (for tests)
        self._agents: dict[str, str] = {}  # sid -> agent id (authenticated sockets)
        self._refused = 0
        self._tokens: list[str] = []  # the token of every accepted socket, in order (tests: rotation)
        self._conversations: dict[str, str] = {}  # agent id -> its v4 conversation
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sio: socketio.AsyncServer | None = None
        self.heartbeat_replies: list[dict[str, Any]] = []

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def env_lines(self) -> list[str]:
        """What an agent needs to find this socket."""
        return ["AIWM_REALTIME=true", f"AIWM_WS_URL={self.url}", f"AIWM_WS_NAMESPACE={self.namespace}",
                f"AIWM_WS_PATH={self.path}"]

    def start(self) -> PortalServer:
        if self._thread is not None:
            return self
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="dev-portal", daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def stop(self) -> None:
        """Close every socket and stop listening (start() again binds the same port)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None
        with self._lock:
            self._agents.clear()

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        loop.run_forever()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=2))
        loop.close()

    async def _serve(self) -> None:
        sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False,
                                   cors_allowed_origins="*")
        app = web.Application()
        sio.attach(app, socketio_path=self.path)
        ns = self.namespace
        sio.on("connect", self._on_connect, namespace=ns)
        sio.on("disconnect", self._on_disconnect, namespace=ns)
        sio.on("message:send", self._on_send, namespace=ns)
        sio.on("message:typing", self._on_typing, namespace=ns)
        if self.dialect == "v6":
            sio.on("agent:heartbeat", self._on_heartbeat, namespace=ns)
        self._sio = sio
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        await site.start()
        if self._port == 0:
            self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def _shutdown(self) -> None:
        if self._sio is not None:
            with self._lock:
                sids = list(self._agents)
            for sid in sids:
                await self._sio.disconnect(sid, namespace=self.namespace)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- socket handlers (on the server's loop) ----------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not token:
            header = str(environ.get("HTTP_AUTHORIZATION") or "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        claims = self.controller.verify_token(str(token or ""))
        assert self._sio is not None
        if claims is None:
            # A real controller accepts, then disconnects at once ("io server disconnect").
            with self._lock:
                self._refused += 1
            sio = self._sio
            asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(
                sio.disconnect(sid, namespace=self.namespace)))
            return True
        agent_id = str(claims.get("sub") or "")
        with self._lock:
            self._agents[sid] = agent_id
            self._tokens.append(str(token))
            conversation = self._conversations.setdefault(agent_id, _object_id())
        if self.dialect == "v4":
            await self._sio.enter_room(sid, conversation, namespace=self.namespace)
            await self._sio.emit("presence:update", {"type": "agent", "agentId": agent_id,
                                                     "conversationId": conversation, "status": "online"},
                                 namespace=self.namespace)
        return True

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        with self._lock:
            self._agents.pop(sid, None)

    async def _on_send(self, sid: str, data: Any) -> dict[str, Any]:
        assert self._sio is not None
        with self._lock:
            agent_id = self._agents.get(sid, "")
            refuse = self.refuse_sends
        if refuse:
            await self._sio.emit("message:error", {"error": PERMISSION_ERROR}, to=sid, namespace=self.namespace)
            return {"success": False, "error": PERMISSION_ERROR}
        message_id = _object_id()
        record = {**(copy.deepcopy(data) if isinstance(data, dict) else {"raw": data}), "_id": message_id,
                  "time": time.time()}
        with self._lock:
            self._sent.append(record)
        await self._sio.emit("message:sent", {"messageId": message_id}, to=sid, namespace=self.namespace)
        if self.dialect == "v4" and isinstance(data, dict):  # v4 echoes the whole document to the sender too
            echo = {"_id": message_id, "conversationId": data.get("conversationId"), "role": "assistant",
                    "content": data.get("content"), "type": data.get("type", "message"),
                    "owner": {"agentId": agent_id}, "createdBy": {"agentId": agent_id}}
            await self._sio.emit("message:new", echo, to=sid, namespace=self.namespace)
        return {"success": True, "message": {"_id": message_id}}

    async def _on_typing(self, sid: str, data: Any) -> None:
        with self._lock:
            self._typing.append(copy.deepcopy(data) if isinstance(data, dict) else {"raw": data})

    async def _on_heartbeat(self, sid: str, data: Any) -> dict[str, Any]:
        with self._lock:
            self._heartbeats.append({**(copy.deepcopy(data) if isinstance(data, dict) else {}),
                                     "time": time.time()})
            reply: dict[str, Any] = {"success": True}
            idle = isinstance(data, dict) and data.get("status") == "idle"
            if self.heartbeat_replies and idle:
                reply.update(self.heartbeat_replies.pop(0))
            elif idle and isinstance(data, dict) and self.controller.work.agent_can_work(data):
                reply.update(self.controller.work.next_offer() or {})
        return reply

    # -- what tests and the admin routes do (any thread) -------------------------------------------------

    def _submit(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the portal socket is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    def conversation_for(self, agent_id: str | None = None) -> str:
        agent = agent_id or self.controller.agent_id
        with self._lock:
            return self._conversations.setdefault(agent, _object_id())

    def post(self, content: str, conversation_id: str | None = None, **fields: Any) -> str:
        """A person types `content` in the portal: `message:new` to the agent. Returns the message id."""
        conversation = conversation_id or self.conversation_for()
        message_id = str(fields.pop("_id", None) or _object_id())
        if self.dialect == "v4":
            payload: dict[str, Any] = {"_id": message_id, "conversationId": conversation, "role": "user",
                                       "content": content, "type": "message",
                                       "owner": {"userId": "dev-user"}, "createdBy": {"userId": "dev-user"},
                                       "participantId": "dev-user"}
        else:
            payload = {"_id": message_id, "conversationId": conversation, "role": "user", "content": content,
                       "userId": "dev-user", "username": "dev", "fullname": "Dev User", "platform": "portal"}
        payload.update(fields)
        self.send_raw("message:new", payload)
        return message_id

    def send_raw(self, event: str, payload: Any) -> None:
        assert self._sio is not None
        self._submit(self._sio.emit(event, payload, namespace=self.namespace))

    def command(self, kind: str, conversation_id: str = "", reason: str = "", timeout: float = 10.0) -> Any:
        """An operator's `agent:command`; returns the agent's ack."""
        with self._lock:
            sids = list(self._agents)
        if not sids:
            raise RuntimeError("no agent is connected to the portal socket")
        payload = {"type": kind, "conversationId": conversation_id, "reason": reason}
        assert self._sio is not None
        return self._submit(self._sio.call("agent:command", payload, to=sids[0], namespace=self.namespace,
                                           timeout=timeout))

    @property
    def sent(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._sent)

    @property
    def typing(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._typing)

    @property
    def heartbeats(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._heartbeats)

    @property
    def connected(self) -> int:
        with self._lock:
            return len(self._agents)

    @property
    def accepted_tokens(self) -> list[str]:
        with self._lock:
            return list(self._tokens)

    @property
    def refused(self) -> int:
        with self._lock:
            return self._refused
