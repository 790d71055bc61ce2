from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiwm_agentd.config import PlatformConfig
from aiwm_agentd.platforms.addressing import Inbound, should_answer
from aiwm_agentd.platforms.base import connection_fields
from aiwm_agentd.platforms.commands import format_reload, format_status, parse_command
from aiwm_agentd.platforms.discord_worker import strip_mention
from aiwm_agentd.platforms.telegram_worker import _strip_mention, bot_api_urls

CONFIG = PlatformConfig(
    platform="telegram", enabled=True, token="t" * 20, target_ids=("-100", "-200"), bot_id="",
    require_mentions=True, allow_direct_messages=False, api_base_url="", gateway_url="",
)


def msg(**kw: object) -> Inbound:
    base: dict[str, object] = dict(author_is_bot=False, is_direct=False, chat_ids=("-100",), mentioned=True,
                                   replied_to_bot=False)
    base.update(kw)
    return Inbound(**base)  # type: ignore[arg-type]


def test_mention_in_allowed_group_is_answered() -> None:
    assert should_answer(msg(), CONFIG)
    assert should_answer(msg(mentioned=False, replied_to_bot=True), CONFIG)
    assert should_answer(msg(mentioned=False, explicit_command=True), CONFIG)


@pytest.mark.parametrize("inbound", [
    msg(chat_ids=("-300",)),  # another group
    msg(author_is_bot=True),  # another bot, or the bot itself
    msg(mentioned=False),  # not addressed
    msg(is_direct=True, chat_ids=("42",)),  # DMs not allowed
])
def test_not_answered(inbound: Inbound) -> None:
    assert not should_answer(inbound, CONFIG)


def test_settings_open_up_dms_and_unmentioned_messages_and_threads() -> None:
    open_config = dataclasses.replace(CONFIG, require_mentions=False, allow_direct_messages=True,
                                      allowed_user_ids=("42",))
    assert should_answer(msg(mentioned=False, author_id="42"), open_config)
    assert should_answer(msg(is_direct=True, chat_ids=("42",), mentioned=False, author_id="42"), open_config)
    assert not should_answer(msg(chat_ids=("-300",), mentioned=False), open_config)
    assert should_answer(msg(chat_ids=("999", "-200")), CONFIG)  # a thread under an allowed channel
    assert not should_answer(msg(), dataclasses.replace(CONFIG, target_ids=()))


def test_parse_command() -> None:
    assert parse_command("hello") is None
    assert parse_command("/etc/hosts is a file") is None
    new = parse_command(" /new ")
    assert new is not None and new.name == "new" and not new.for_other_bot
    status = parse_command("/Status@Aiwm_Bot now", "aiwm_bot")
    assert status is not None and status.name == "status" and status.args == "now"
    other = parse_command("/stop@someone_else", "aiwm_bot")
    assert other is not None and other.for_other_bot
    assert parse_command("/reload").name == "reload"  # type: ignore[union-attr]


def test_command_texts() -> None:
    text = format_status({"agent": "vm-1", "controller": {"state": "connected"}}, 2, True)
    assert "agent: vm-1" in text and "state=connected" in text and "queue (this chat): 2" in text
    assert "unchanged" in format_reload([])
    assert "- telegram.target_ids: a -> b" in format_reload(["telegram.target_ids: a -> b"])


def test_mention_stripping() -> None:
    assert strip_mention("<@123> hello <@!123>", 123) == "hello"
    assert strip_mention("<@1234> hi", 123) == "<@1234> hi"
    assert _strip_mention("@Aiwm_Bot what is\n```\ncode\n```", "@aiwm_bot") == "what is\n```\ncode\n```"
    assert _strip_mention("@aiwm_bot_two hi", "@aiwm_bot") == "@aiwm_bot_two hi"


def test_bot_api_urls_accept_root_or_bot_suffix() -> None:
    assert bot_api_urls("http://127.0.0.1:8081") == ("http://127.0.0.1:8081/bot", "http://127.0.0.1:8081/file/bot")
    assert bot_api_urls("http://h:1/bot/") == ("http://h:1/bot", "http://h:1/file/bot")


def test_only_connection_settings_need_a_reconnect() -> None:
    assert connection_fields(CONFIG) == connection_fields(dataclasses.replace(CONFIG, target_ids=("-1",)))
    assert connection_fields(CONFIG) != connection_fields(dataclasses.replace(CONFIG, token="u" * 20))


def test_disabled_platforms_do_not_import_their_libraries() -> None:
    code = (
        "import sys\n"
        "from aiwm_agentd.config import build_agent_config, load_daemon_settings\n"
        "from aiwm_agentd.platforms import build_platform_workers\n"
        "env = {'AIWM_ENABLED': 'false', 'AIWM_STATE_DIR': '/tmp'}\n"
        "cfg = build_agent_config(env, None, load_daemon_settings(env))\n"
        "workers = build_platform_workers(cfg, None, None)\n"
        "import time\n"
        "[w.start() for w in workers]; time.sleep(0.2)\n"
        "assert [w.health().state for w in workers] == ['stopped', 'stopped'], [w.health() for w in workers]\n"
        "[w.stop(time.monotonic() + 1) for w in workers]\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'discord', 'telegram', 'httpx', 'aiohttp'}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "TELEGRAM_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
