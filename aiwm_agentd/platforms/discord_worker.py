"""The Discord bot: a discord.py `Client` started with `start()` and stopped with `close()` in the worker loop.

Never `client.run()` (it wraps asyncio.run and installs signal handlers). A fresh Client per session.
The REST base and the gateway are process-wide class attributes in discord.py (`http.Route.BASE`,
`gateway.DiscordWebSocket.DEFAULT_GATEWAY`); DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL set them before each
session (one Discord worker per process).

Health: ready, not closed, finite heartbeat latency. During an outage discord.py keeps `is_ready()` True and
reconnects by itself while latency is infinite: that is "degraded", not a reason to restart.

Catch-up: Discord does not redeliver what was sent while we were away. The worker keeps a "last alive" mark
in its inbox (every ALIVE_EVERY seconds while connected, and at stop); on READY it answers what the inbox
holds, then reads each answered channel's history after max(last alive - slack, now - catch-up window) and
passes it through the usual addressing rules. The inbox's dedup keys (message ids) make overlaps harmless.
Live messages arriving meanwhile wait in a buffer, so a conversation's messages keep their order.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiwm_agentd.config import PlatformConfig
from aiwm_agentd.platforms.addressing import Inbound, should_answer
from aiwm_agentd.platforms.base import ConfigurationError, PlatformWorker
from aiwm_agentd.platforms.commands import parse_command
from aiwm_agentd.platforms.errors import describe as _describe
from aiwm_agentd.workers import ConversationKey, HealthState

if TYPE_CHECKING:
    import discord

PUBLIC_API = "https://discord.com/api/v10"
PUBLIC_GATEWAY = "wss://gateway.discord.gg/"
NOT_READY_GRACE = 30.0  # seconds before "still connecting" counts as degraded
ALIVE_CURSOR = "alive"  # inbox cursor: epoch seconds when we last were connected
ALIVE_EVERY = 30.0  # how often the mark is refreshed while connected
ALIVE_SLACK = 60.0  # history is read from this long before the mark (events in flight when we went down)
CATCHUP_LIMIT = 500  # messages read per channel at most
CATCHUP_TIMEOUT = 30.0  # live messages wait (in order) at most this long for the history to be read


def use_endpoints(config: PlatformConfig) -> None:
    """Point discord.py at DISCORD_API_BASE_URL / DISCORD_GATEWAY_URL, or back at the public service."""
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = config.api_base_url.rstrip("/") or PUBLIC_API
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.gateway_url or PUBLIC_GATEWAY)


def build_client(worker: DiscordWorker) -> discord.Client:
    import discord

    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True  # privileged: without it we'd see no text unless mentioned
    client = discord.Client(
        intents=intents,
        guild_ready_timeout=worker.guild_ready_timeout,
        chunk_guilds_at_startup=False,
        max_messages=None,
        allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True),
    )

    async def on_message(message: discord.Message) -> None:
        worker.on_message(client, message)

    async def on_ready() -> None:
        worker.on_ready(client)

    client.event(on_message)
    client.event(on_ready)
    return client


class DiscordResponder:
    """Replies to a message (a full one, or a `PartialMessage` rebuilt from ids after a restart)."""

    def __init__(self, message: discord.Message | discord.PartialMessage) -> None:
        self._message = message

    async def send(self, text: str) -> None:
        # discord.py retries 429s itself, honouring retry_after.
        await self._message.reply(text, mention_author=False)

    async def typing(self) -> None:
        await self._message.channel.typing()


class DiscordWorker(PlatformWorker):
    name = "discord"
    message_limit = 2000
    typing_interval = 8.0  # a Discord typing indicator lasts 10 s
    guild_ready_timeout = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: discord.Client | None = None
        self._catching_up = False
        self._held: list[discord.Message] = []  # live messages that arrived during catch-up
        self._alive_marked = 0.0
        self.caught_up = 0  # messages found in the history (for tests and /health)

    async def _session(self, config: PlatformConfig) -> None:
        import discord

        use_endpoints(config)
        client = build_client(self)
        self._client = client
        self._catching_up, self._held, self._alive_marked = True, [], 0.0
        began = time.monotonic()
        runner = asyncio.get_running_loop().create_task(client.start(config.token))
        monitor = asyncio.get_running_loop().create_task(self._monitor(lambda: self._probe(client, began)))
        try:
            done, _ = await asyncio.wait({runner, monitor}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                monitor.cancel()
                exc = runner.exception()
                if isinstance(exc, discord.LoginFailure):
                    raise ConfigurationError(
                        "Discord rejected the bot token (401 Unauthorized): check DISCORD_TOKEN "
                        "or the discord channel token on the controller"
                    )
                if isinstance(exc, discord.PrivilegedIntentsRequired):
                    raise ConfigurationError(
                        "Discord refused the Message Content intent: enable 'Message Content Intent' for "
                        "this bot in the Discord Developer Portal (Bot > Privileged Gateway Intents)"
                    )
                if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
                    raise ConfigurationError("Discord gateway rejected the bot token (close code 4004)")
                if exc is not None:
                    raise exc
                raise RuntimeError("Discord client stopped")
            monitor.result()
        finally:
            monitor.cancel()
            if client.is_ready():
                self._mark_alive(sync=True)
            if not client.is_closed():
                await self._bounded("discord close", client.close())
            if not runner.done():
                runner.cancel()
                await asyncio.wait({runner}, timeout=0.1)
            elif not runner.cancelled():
                runner.exception()  # retrieved, so asyncio does not log it again
            self._client = None

    def _probe(self, client: discord.Client, began: float) -> tuple[HealthState, str]:
        if client.is_closed():
            raise RuntimeError("Discord client closed")
        if not client.is_ready():
            if time.monotonic() - began > NOT_READY_GRACE:
                return "degraded", "not ready yet (gateway unreachable?)"
            return "starting", "connecting to the gateway"
        if not math.isfinite(client.latency):
            return "degraded", "gateway connection lost; reconnecting"
        user = client.user
        if not self._catching_up and time.monotonic() - self._alive_marked > ALIVE_EVERY:
            self._mark_alive()
        return "ok", f"connected as {user} (latency {client.latency * 1000:.0f} ms)"

    def _mark_alive(self, sync: bool = False) -> None:
        if self._inbox is not None:
            self._alive_marked = time.monotonic()
            self._inbox.set_cursor(ALIVE_CURSOR, f"{time.time():.3f}", sync=sync)

    # -------------------------------------------------------------------------------------------- catch-up

    def on_ready(self, client: discord.Client) -> None:
        """READY (first connect, or a new gateway session after a long outage): catch up once per session."""
        if self._catching_up:
            self._spawn(self._catch_up(client))

    def responder_for(self, address: Mapping[str, str]) -> DiscordResponder | None:
        client = self._client
        if client is None or not address.get("channel") or not address.get("message"):
            return None
        channel = client.get_partial_messageable(int(address["channel"]))
        return DiscordResponder(channel.get_partial_message(int(address["message"])))

    async def _catch_up(self, client: discord.Client) -> None:
        try:
            await self._replay_pending()
            await asyncio.wait_for(self._read_history(client), CATCHUP_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning("discord: catching up failed: %s", _describe(exc))
        finally:
            self._catching_up = False
            held, self._held = self._held, []
            for message in held:
                self.on_message(client, message)
            self._mark_alive(sync=True)

    async def _read_history(self, client: discord.Client) -> None:
        import discord
        from discord.utils import time_snowflake

        inbox = self._inbox
        alive = inbox.cursor(ALIVE_CURSOR) if inbox is not None else ""
        window = self._config.catchup_window
        if not alive or window <= 0:
            return  # first run (nothing to catch up with) or catch-up turned off
        since = max(float(alive) - ALIVE_SLACK, time.time() - window)
        after = discord.Object(time_snowflake(dtm.datetime.fromtimestamp(since, dtm.UTC)))
        began, found = time.monotonic(), 0
        for channel_id in self._config.target_ids:
            channel = client.get_channel(int(channel_id)) if channel_id.isdigit() else None
            if not isinstance(channel, discord.abc.Messageable):
                continue
            async for message in channel.history(after=after, oldest_first=True, limit=CATCHUP_LIMIT):
                found += 1
                self.on_message(client, message, catching_up=True)
        self.caught_up += found
        self.log.info("discord: read %d message(s) sent while away in %.2f s", found, time.monotonic() - began)

    # --------------------------------------------------------------------------------------------

    def on_message(self, client: discord.Client, message: discord.Message, catching_up: bool = False) -> None:
        import discord

        me = client.user
        if me is None:
            return
        if self._catching_up and not catching_up:
            self._held.append(message)
            return
        channel = message.channel
        chat_ids = [str(channel.id)]
        thread = ""
        if isinstance(channel, discord.Thread) and channel.parent_id:
            chat_ids.append(str(channel.parent_id))
            thread = str(channel.id)
        resolved = message.reference.resolved if message.reference else None
        inbound = Inbound(
            author_is_bot=message.author.bot or message.author.id == me.id,
            is_direct=isinstance(channel, discord.DMChannel),
            chat_ids=tuple(chat_ids),
            mentioned=me.id in message.raw_mentions or any(u.id == me.id for u in message.mentions),
            replied_to_bot=isinstance(resolved, discord.Message) and resolved.author.id == me.id,
            author_id=str(message.author.id),
        )
        if not should_answer(inbound, self._config):
            return
        text = strip_mention(message.content, me.id)
        command = parse_command(text)
        if command is not None and command.for_other_bot:
            return
        key = ConversationKey("discord", chat_ids[-1], thread)
        author = str(message.author.id)
        address = {"channel": str(channel.id), "message": str(message.id), "author": author}
        self.handle_message(key, text, command, DiscordResponder(message), message_key=str(message.id),
                            address=address, sent_at=message.created_at.timestamp(), author_id=author)


def strip_mention(text: str, user_id: int) -> str:
    return re.sub(rf"[ \t]*<@!?{user_id}>[ \t]*", " ", text).strip()

