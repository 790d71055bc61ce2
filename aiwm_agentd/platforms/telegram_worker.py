"""The Telegram bot: a python-telegram-bot `Application` driven by hand in the worker's loop.

Never `run_polling()` (it owns the loop and installs signal handlers): initialize / start /
updater.start_polling, then updater.stop / stop / shutdown, with a fresh Application per session.

Health: PTB keeps `running` True after its polling loop died (revoked token), so we watch the polling task
itself and the time of the last successful getUpdates (recorded by the request object).
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import re
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiwm_agentd.config import PlatformConfig
from aiwm_agentd.platforms.addressing import Inbound, should_answer
from aiwm_agentd.platforms.base import ConfigurationError, PlatformWorker
from aiwm_agentd.platforms.commands import parse_command
from aiwm_agentd.platforms.errors import describe as _describe
from aiwm_agentd.workers import ConversationKey, HealthState

if TYPE_CHECKING:
    from telegram import Bot, Message, Update
    from telegram.ext import Application, ContextTypes

POLLING_TASK_NAME = "Updater:start_polling:polling_task"
MAX_RETRY_AFTER = 5


def bot_api_urls(api_base_url: str) -> tuple[str, str]:
    """(base_url, base_file_url) for PTB from TELEGRAM_API_BASE_URL ('http://host:port' or '.../bot')."""
    root = api_base_url.rstrip("/")
    if root.endswith("/bot"):
        root = root[: -len("/bot")]
    return f"{root}/bot", f"{root}/file/bot"


class TelegramResponder:
    """Replies to one message, known by ids only, so a message recorded before a restart can be answered."""

    def __init__(self, bot: Bot, chat_id: int, message_id: int, thread_id: int | None,
                 worker: TelegramWorker) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._message_id = message_id
        self._thread_id = thread_id
        self._worker = worker

    @classmethod
    def to(cls, bot: Bot, message: Message, worker: TelegramWorker) -> TelegramResponder:
        thread_id = message.message_thread_id if message.is_topic_message else None
        return cls(bot, message.chat_id, message.message_id, thread_id, worker)

    async def send(self, text: str) -> None:
        from telegram import ReplyParameters
        from telegram.error import RetryAfter

        for attempt in range(MAX_RETRY_AFTER + 1):
            try:
                await self._bot.send_message(
                    chat_id=self._chat_id, text=text, message_thread_id=self._thread_id,
                    reply_parameters=ReplyParameters(self._message_id, allow_sending_without_reply=True),
                )
                return
            except RetryAfter as exc:
                if attempt == MAX_RETRY_AFTER:
                    raise
                delay = _retry_after_seconds(exc)
                self._worker.log.info("telegram: rate limited; retrying in %.1f s", delay)
                await asyncio.sleep(delay)

    async def typing(self) -> None:
        from telegram.constants import ChatAction

        await self._bot.send_chat_action(self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id)


def _retry_after_seconds(exc: Any) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that the type of retry_after will change
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


class TelegramWorker(PlatformWorker):
    name = "telegram"
    message_limit = 4096
    typing_interval = 4.0  # Telegram clients drop "typing" after about 5 s
    # Long-poll seconds: an idle bot makes one request per poll_timeout, and a healthy loop completes a poll at
    # least this often. 30 s (Telegram allows 50) triples the 10 s poll's quiet time; stop cancels the poll.
    poll_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_poll_ok = 0.0
        self._last_poll_status = 0
        self._poll_error = ""
        self._bot_username = ""
        self._bot_id = 0
        self._bot: Bot | None = None

    async def _session(self, config: PlatformConfig) -> None:
        from aiwm_agentd.optional_imports import import_telegram

        import_telegram()  # without the extras an agent never uses (~10 MiB)
        from telegram import Update
        from telegram.error import InvalidToken
        from telegram.ext import ApplicationBuilder, TypeHandler

        builder = (
            ApplicationBuilder()
            .token(config.token)
            .get_updates_request(_tracking_request(self))
            .job_queue(None)
        )
        if config.api_base_url:
            base, files = bot_api_urls(config.api_base_url)
            builder = builder.base_url(base).base_file_url(files)
        app = builder.build()
        app.add_handler(TypeHandler(Update, self._on_update))
        self._last_poll_ok = 0.0
        self._last_poll_status = 0
        self._poll_error = ""
        try:
            try:
                await app.initialize()
            except InvalidToken:
                # Its message contains the token: never log it.
                raise ConfigurationError(
                    "Telegram rejected the bot token (401 Unauthorized): check TELEGRAM_BOT_TOKEN "
                    "or the telegram channel token on the controller"
                ) from None
            self._bot_username = app.bot.username or ""
            self._bot_id = app.bot.id
            assert app.updater is not None
            await app.start()
            self._bot = app.bot
            # Before polling: what an earlier run left unanswered goes first, then the pending updates.
            await self._replay_pending()
            await app.updater.start_polling(timeout=dtm.timedelta(seconds=self.poll_timeout),
                                            error_callback=self._on_poll_error)
            polling = next((t for t in asyncio.all_tasks() if t.get_name() == POLLING_TASK_NAME), None)
            self._last_poll_ok = time.monotonic()  # getMe and deleteWebhook just succeeded
            self.log.info("telegram: connected as @%s", self._bot_username)
            await self._monitor(lambda: self._probe(polling))
        finally:
            self._bot = None
            await self._shutdown(app)

    def responder_for(self, address: Mapping[str, str]) -> TelegramResponder | None:
        if self._bot is None or not address.get("chat") or not address.get("message"):
            return None
        thread = address.get("thread") or ""
        return TelegramResponder(self._bot, int(address["chat"]), int(address["message"]),
                                 int(thread) if thread else None, self)

    async def _shutdown(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        if app.updater is not None and app.updater.running:
            await self._bounded("telegram updater stop", app.updater.stop())
        if app.running:
            await self._bounded("telegram application stop", app.stop())
        await self._bounded("telegram application shutdown", app.shutdown())
        await self._bounded("telegram bot shutdown", app.bot.shutdown())

    def _on_poll_error(self, exc: Exception) -> None:
        self._poll_error = _describe(exc)
        self.log.warning("telegram: polling error: %s", self._poll_error)

    def _probe(self, polling: asyncio.Task[Any] | None) -> tuple[HealthState, str]:
        from telegram.error import InvalidToken

        if polling is not None and polling.done():
            exc = None if polling.cancelled() else polling.exception()
            if isinstance(exc, InvalidToken) or self._last_poll_status in (401, 404):
                raise ConfigurationError(
                    "Telegram rejected the bot token while polling (revoked?): check TELEGRAM_BOT_TOKEN"
                )
            raise RuntimeError(f"Telegram polling stopped: {_describe(exc) if exc else 'cancelled'}")
        age = time.monotonic() - self._last_poll_ok
        if self._poll_error:
            return "degraded", f"polling failing: {self._poll_error}"
        if age > self.poll_timeout + 15.0:
            status = f"HTTP {self._last_poll_status}" if self._last_poll_status else "no answer"
            return "degraded", f"no successful poll for {age:.0f} s ({status})"
        return "ok", f"polling as @{self._bot_username}"

    # --------------------------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None:
            return
        text = message.text or message.caption or ""
        if not text:
            return
        command = parse_command(text, self._bot_username)
        if command is not None and command.for_other_bot:
            return
        mention = f"@{self._bot_username}".lower() if self._bot_username else ""
        reply_to = message.reply_to_message
        inbound = Inbound(
            author_is_bot=message.from_user.is_bot,
            is_direct=message.chat.type == "private",
            chat_ids=(str(message.chat_id),),
            mentioned=self._mentioned(message, mention),
            replied_to_bot=bool(reply_to and reply_to.from_user and reply_to.from_user.id == self._bot_id),
            explicit_command=command is not None,
            author_id=str(message.from_user.id),
        )
        if not should_answer(inbound, self._config):
            return
        sent_at = message.date.timestamp() if message.date else None
        window = self._config.catchup_window
        if window > 0 and sent_at is not None and time.time() - sent_at > window:
            self.log.info("telegram: not answering a message sent %.0f s ago (TELEGRAM_CATCHUP_WINDOW)",
                          time.time() - sent_at)
            return
        thread = str(message.message_thread_id) if message.is_topic_message else ""
        key = ConversationKey("telegram", str(message.chat_id), thread)
        cleaned = _strip_mention(text, mention) if mention else text
        author = str(message.from_user.id)
        address = {"chat": str(message.chat_id), "message": str(message.message_id), "thread": thread,
                   "author": author}
        self.handle_message(key, cleaned, command, TelegramResponder.to(context.bot, message, self),
                            message_key=f"{message.chat_id}:{message.message_id}", address=address,
                            sent_at=sent_at, author_id=author)

    def _mentioned(self, message: Message, mention: str) -> bool:
        for entity, value in {**message.parse_entities(), **message.parse_caption_entities()}.items():
            if entity.type == "mention" and mention and value.lower() == mention:
                return True
            if entity.type == "text_mention" and entity.user is not None and entity.user.id == self._bot_id:
                return True
        return False


def _strip_mention(text: str, mention: str) -> str:
    return re.sub(rf"[ \t]*{re.escape(mention)}\b[ \t]*", " ", text, flags=re.IGNORECASE).strip()


def _tracking_request(worker: TelegramWorker) -> Any:
    """An HTTPXRequest that records when getUpdates last succeeded (and the last status code)."""
    from telegram.request import HTTPXRequest

    class TrackingRequest(HTTPXRequest):
        async def do_request(self, url: str, method: str, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
            code, payload = await super().do_request(url, method, *args, **kwargs)
            worker._last_poll_status = code
            if 200 <= code < 300:
                worker._last_poll_ok = time.monotonic()
                worker._poll_error = ""
            return code, payload

    return TrackingRequest()
