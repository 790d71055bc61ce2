"""A fake Telegram Bot API on 127.0.0.1 (aiohttp in its own thread), for driving a real PTB Application.

    fake = FakeTelegram(token).start()       # fake.url -> TELEGRAM_API_BASE_URL ("http://127.0.0.1:PORT")
    fake.inject_message(-100, "@aiwm_test_bot hi")   # a group message mentioning the bot; returns message_id
    fake.wait_for_sent(1)                    # sendMessage calls (dicts of their parameters), in order
    fake.actions                             # sendChatAction calls
    fake.revoke()                            # every call now answers 401 (pending long-polls too)
    fake.rate_limit(times=1, retry_after=1)  # the next sendMessage calls answer 429
    fake.stop()

Implements getMe, deleteWebhook, getUpdates (long-poll with offset), sendMessage, sendChatAction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import Any

from aiohttp import web

BOT_ID = 7001
BOT_USERNAME = "aiwm_test_bot"


class FakeTelegram:
    def __init__(self, token: str, *, username: str = BOT_USERNAME, bot_id: int = BOT_ID, port: int = 0) -> None:
        self.token = token
        self.username = username
        self.bot_id = bot_id
        self.port = port
        self.sent: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.calls: list[tuple[str, int]] = []  # (method, status) of every request
        self.revoked = False
        self._rate_limited = 0
        self._retry_after = 1
        self._updates: list[dict[str, Any]] = []
        self._next_update = 1
        self._next_message = 1000
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # replaced (and set) on every change
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeTelegram:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fake-telegram", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake Telegram did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._changed = asyncio.Event()
        ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        self._wake_pollers()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------ test controls

    def revoke(self) -> None:
        """The token stops working: every call (and every pending long-poll) answers 401."""
        self.revoked = True
        self._notify()

    def rate_limit(self, times: int = 1, retry_after: int = 1) -> None:
        with self._lock:
            self._rate_limited = times
            self._retry_after = retry_after

    def inject_message(
        self, chat_id: int, text: str, *, from_id: int = 42, from_bot: bool = False, chat_type: str = "",
        reply_to_bot: bool = False, username: str = "alice", sent_ago: float = 0.0,
    ) -> int:
        """Queue a message update; `@username` mentions become entities; `sent_ago` backdates it (seconds).
        Returns its message_id."""
        chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
        with self._lock:
            self._next_message += 1
            message_id = self._next_message
            message: dict[str, Any] = {
                "message_id": message_id,
                "date": int(time.time() - sent_ago),
                "chat": {"id": chat_id, "type": chat_type, "title": f"chat {chat_id}"},
                "from": {"id": from_id, "is_bot": from_bot, "first_name": username, "username": username},
                "text": text,
                "entities": _mention_entities(text),
            }
            if reply_to_bot:
                message["reply_to_message"] = {
                    "message_id": message_id - 1, "date": int(time.time()),
                    "chat": message["chat"], "from": self._bot_user(), "text": "earlier answer",
                }
            self._updates.append({"update_id": self._next_update, "message": message})
            self._next_update += 1
        self._notify()
        return message_id

    def wait_for_sent(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.sent) >= count:
                    return list(self.sent)
            time.sleep(0.005)
        raise AssertionError(f"expected {count} sendMessage calls, got {len(self.sent)}: {self.sent}")

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake_pollers)

    def _wake_pollers(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    # ------------------------------------------------------------------ the API

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "AIWM Test", "username": self.username}

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        if request.match_info["token"] != self.token or self.revoked:
            return self._answer(method, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        if method == "getMe":
            return self._answer(method, 200, {"ok": True, "result": {
                **self._bot_user(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}})
        if method in ("deleteWebhook", "setMyCommands"):
            return self._answer(method, 200, {"ok": True, "result": True})
        if method == "getUpdates":
            return await self._get_updates(params)
        if method == "sendChatAction":
            with self._lock:
                self.actions.append(params)
            return self._answer(method, 200, {"ok": True, "result": True})
        if method == "sendMessage":
            return self._send_message(params)
        return self._answer(method, 404, {"ok": False, "error_code": 404, "description": "Not Found"})

    def _answer(self, method: str, status: int, body: dict[str, Any]) -> web.Response:
        with self._lock:
            self.calls.append((method, status))
        return web.json_response(body, status=status)

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            assert changed is not None
            if self.revoked:
                return self._answer("getUpdates", 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            with self._lock:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                pending = list(self._updates)
            left = deadline - time.monotonic()
            if pending or left <= 0 or self._runner is None:
                return self._answer("getUpdates", 200, {"ok": True, "result": pending})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def _send_message(self, params: dict[str, Any]) -> web.Response:
        with self._lock:
            if self._rate_limited > 0:
                self._rate_limited -= 1
                retry = self._retry_after
                limited = True
            else:
                limited = False
                self.sent.append(params)
                self._next_message += 1
                message_id = self._next_message
        if limited:
            return self._answer("sendMessage", 429, {
                "ok": False, "error_code": 429, "description": f"Too Many Requests: retry after {retry}",
                "parameters": {"retry_after": retry}})
        chat_id = int(params["chat_id"])
        return self._answer("sendMessage", 200, {"ok": True, "result": {
            "message_id": message_id, "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "from": self._bot_user(), "text": params.get("text", "")}})


async def _params(request: web.Request) -> dict[str, Any]:
    """PTB posts form fields whose complex values are JSON; decode those back."""
    if request.content_type == "application/json":
        data: dict[str, Any] = await request.json()
        return data
    form = await request.post()
    params: dict[str, Any] = {}
    for key, value in form.items():
        text = str(value)
        if text[:1] in "{[":
            try:
                params[key] = json.loads(text)
                continue
            except ValueError:
                pass
        params[key] = text
    return params


def _mention_entities(text: str) -> list[dict[str, Any]]:
    entities = []
    i = 0
    while (i := text.find("@", i)) >= 0:
        j = i + 1
        while j < len(text) and (text[j].isalnum() or text[j] == "_"):
            j += 1
        if j > i + 1:
            entities.append({"type": "mention", "offset": i, "length": j - i})
        i = j
    return entities
