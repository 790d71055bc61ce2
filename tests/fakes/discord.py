"""A fake Discord REST API + gateway on 127.0.0.1 (aiohttp in its own thread), for a real discord.py Client.

    fake = FakeDiscord(token).start()     # fake.api_url -> DISCORD_API_BASE_URL, fake.gateway_url -> ..._GATEWAY_URL
    fake.wait_ready()                     # a client identified and got READY + GUILD_CREATE
    fake.inject_message(CHANNEL, "hi", mention_bot=True)   # MESSAGE_CREATE to every connected client
    fake.wait_for_sent(1)                 # POST /channels/{id}/messages bodies (+ "channel_id"), in order
    fake.typing                           # channel ids of POST /channels/{id}/typing
    fake.kill(); fake.restart()           # drop every connection / listen again on the same port
    fake.history                          # channel id -> messages (GET /channels/{id}/messages reads it)
    fake.stop()

Gateway: HELLO, IDENTIFY -> READY + GUILD_CREATE (or close 4004 for a bad token, 4014 when
`privileged_ok=False` and the Message Content intent is requested), heartbeat ACK, RESUME -> RESUMED,
plain-text JSON frames (no compression).
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import threading
import time
from typing import Any

from aiohttp import WSMsgType, web

BOT_ID = 900000000000000001
GUILD_ID = 800000000000000001
CHANNEL_ID = 700000000000000001  # a text channel in the guild
OTHER_CHANNEL_ID = 700000000000000002  # another text channel in the guild
MESSAGE_CONTENT_INTENT = 1 << 15
DISCORD_EPOCH_MS = 1420070400000


class FakeDiscord:
    def __init__(self, token: str, *, port: int = 0, privileged_ok: bool = True) -> None:
        self.token = token
        self.port = port
        self.privileged_ok = privileged_ok
        self.sent: list[dict[str, Any]] = []
        self.history: dict[int, list[dict[str, Any]]] = {}
        self.history_reads = 0
        self.typing: list[int] = []
        self.identifies = 0
        self.resumes = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._sessions: set[str] = set()
        self._seq = 0
        self._next_id = 100000000000000000
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeDiscord:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="fake-discord", daemon=True)
        self._thread.start()
        if not started.wait(5):
            raise RuntimeError("fake Discord did not start")
        return self

    def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._listen())
        started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/api/v10/users/@me", self._me)
        app.router.add_get("/api/v10/oauth2/applications/@me", self._application)
        app.router.add_post("/api/v10/channels/{channel}/messages", self._post_message)
        app.router.add_post("/api/v10/channels/{channel}/typing", self._typing)
        app.router.add_get("/api/v10/channels/{channel}/messages", self._get_messages)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _call(self, coro: Any, timeout: float = 5.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def kill(self) -> None:
        """Stop listening and drop every connection abruptly (sessions are remembered for RESUME)."""
        self._ready.clear()
        self._call(self._close_all())

    def restart(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    async def _close_all(self) -> None:
        for ws in list(self._sockets):
            if ws._req is not None and ws._req.transport is not None:
                ws._req.transport.abort()  # like a network cut: no close frame
        self._sockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ test controls

    def wait_ready(self, timeout: float = 10.0) -> None:
        if not self._ready.wait(timeout):
            raise AssertionError("no discord client became ready on the fake gateway")

    def inject_message(
        self, channel_id: int, content: str, *, mention_bot: bool = False, author_id: int = 42,
        author_bot: bool = False, direct: bool = False, reply_to_bot: bool = False,
    ) -> int:
        """Dispatch a MESSAGE_CREATE (to nobody while no client is connected: then it is only in the channel's
        history, like a message sent while the bot is down). `mention_bot` prefixes `<@BOT_ID>`. Returns the
        message id (a real snowflake: its timestamp is now)."""
        if mention_bot:
            content = f"<@{BOT_ID}> {content}"
        message = self._message(channel_id, content, _user(author_id, "alice", author_bot), direct=direct)
        if mention_bot:
            message["mentions"] = [_user(BOT_ID, "aiwm-bot", True)]
        if reply_to_bot:
            earlier = self._message(channel_id, "earlier answer", _user(BOT_ID, "aiwm-bot", True), direct=direct)
            message["referenced_message"] = earlier
            message["message_reference"] = {"message_id": earlier["id"], "channel_id": str(channel_id)}
            message["type"] = 19
        with self._lock:
            self.history.setdefault(channel_id, []).append(message)
        self._call(self._dispatch("MESSAGE_CREATE", message))
        return int(message["id"])

    def wait_for_sent(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.sent) >= count:
                    return list(self.sent)
            time.sleep(0.005)
        raise AssertionError(f"expected {count} messages posted, got {len(self.sent)}: {self.sent}")

    @property
    def connected(self) -> int:
        return len(self._sockets)

    # ------------------------------------------------------------------ REST

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _me(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return _json(_user(BOT_ID, "aiwm-bot", True))

    async def _application(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return _json({
            "id": str(BOT_ID), "name": "aiwm-bot", "description": "", "icon": None, "bot_public": False,
            "bot_require_code_grant": False, "owner": _user(42, "owner", False), "verify_key": "0" * 64,
            "flags": 1 << 19, "team": None, "summary": "", "interactions_endpoint_url": None,
        })

    async def _post_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        body = await request.json()
        channel_id = int(request.match_info["channel"])
        content = body.get("content") or ""
        if len(content) > 2000:
            return _json({"message": "Invalid Form Body", "code": 50035}, status=400)
        posted = self._message(channel_id, content, _user(BOT_ID, "aiwm-bot", True))
        with self._lock:
            self.sent.append({**body, "channel_id": channel_id})
            self.history.setdefault(channel_id, []).append(posted)
        return _json(posted)

    async def _get_messages(self, request: web.Request) -> web.Response:
        """Like Discord: with `after`, the oldest `limit` messages after it, returned newest first."""
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        channel_id = int(request.match_info["channel"])
        after = int(request.query.get("after") or 0)
        limit = int(request.query.get("limit") or 50)
        with self._lock:
            self.history_reads += 1
            found = [m for m in self.history.get(channel_id, []) if int(m["id"]) > after]
        found.sort(key=lambda m: int(m["id"]))
        return _json(list(reversed(found[:limit])))

    async def _typing(self, request: web.Request) -> web.Response:
        with self._lock:
            self.typing.append(int(request.match_info["channel"]))
        return web.Response(status=204)

    def _message(self, channel_id: int, content: str, author: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        with self._lock:
            # A snowflake whose timestamp is now (discord.py and the catch-up read the time from the id).
            now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            self._next_id = max(self._next_id + 1, now_ms << 22)
            message_id = self._next_id
        message: dict[str, Any] = {
            "id": str(message_id), "channel_id": str(channel_id), "author": author, "content": content,
            "timestamp": dtm.datetime.now(dtm.UTC).isoformat(), "edited_timestamp": None,
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [],
            "embeds": [], "pinned": False, "type": 0, "flags": 0,
        }
        if not direct:
            message["guild_id"] = str(GUILD_ID)
        return message

    # ------------------------------------------------------------------ gateway

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            await self._send_event(ws, event, data)

    async def _send_event(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                break
            payload = json.loads(frame.data)
            op, data = payload.get("op"), payload.get("d")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                await self._identify(ws, data)
            elif op == 6:
                await self._resume(ws, data)
        self._sockets.discard(ws)
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.identifies += 1
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if not self.privileged_ok and int(data.get("intents", 0)) & MESSAGE_CONTENT_INTENT:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = f"session-{self.identifies}"
        self._sessions.add(session)
        self._sockets.add(ws)
        await self._send_event(ws, "READY", {
            "v": 10, "user": _user(BOT_ID, "aiwm-bot", True), "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": session, "resume_gateway_url": self.gateway_url,
            "application": {"id": str(BOT_ID), "flags": 0}, "private_channels": [], "relationships": [],
        })
        await self._send_event(ws, "GUILD_CREATE", _guild())
        self._ready.set()

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.resumes += 1
        if data.get("token") != self.token or data.get("session_id") not in self._sessions:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        self._sockets.add(ws)
        await self._send_event(ws, "RESUMED", {})
        self._ready.set()


def _json(body: Any, status: int = 200) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly "application/json".
    return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"})


def _user(user_id: int, name: str, bot: bool) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": None,
            "avatar": None, "bot": bot}


def _guild() -> dict[str, Any]:
    channels: list[dict[str, Any]] = [
        {"id": str(cid), "type": 0, "name": f"chan-{n}", "position": n, "permission_overwrites": [],
         "parent_id": None, "nsfw": False, "guild_id": str(GUILD_ID)}
        for n, cid in enumerate((CHANNEL_ID, OTHER_CHANNEL_ID))
    ]
    return {
        "id": str(GUILD_ID), "name": "Test Guild", "owner_id": "42", "unavailable": False, "channels": channels,
        "threads": [], "roles": [{"id": str(GUILD_ID), "name": "@everyone", "permissions": "0", "position": 0,
                                  "color": 0, "hoist": False, "managed": False, "mentionable": False}],
        "emojis": [], "stickers": [], "members": [], "voice_states": [], "presences": [], "features": [],
        "member_count": 2, "large": False, "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "mfa_level": 0, "premium_tier": 0, "preferred_locale": "en-US",
        "system_channel_flags": 0, "nsfw_level": 0, "joined_at": dtm.datetime.now(dtm.UTC).isoformat(),
    }
