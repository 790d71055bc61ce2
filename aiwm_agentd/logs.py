"""Logging to stderr for journald, with every secret masked.

Secrets are registered by value (`register_secret`) as soon as they are read from the env file or the
controller; the `SecretMaskingFilter` then replaces them in every record, together with anything shaped
like a JWT or a Telegram bot token, so no code path has to remember to mask.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import TextIO

MASK = "***"
_MIN_SECRET_LEN = 6

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
# Not `\b`: in Bot API URLs the token follows "/bot" directly, and it may end in "-".
_TELEGRAM_TOKEN_RE = re.compile(r"(?<![0-9])\d{5,}:[A-Za-z0-9_-]{30,}(?![A-Za-z0-9_-])")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is masked wherever it would be logged."""
    global _secrets
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value not in _secrets:
            _secrets = _secrets | {value}


def mask(text: str) -> str:
    """Return `text` with every registered secret and token-shaped string replaced by `***`."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _JWT_RE.sub(MASK, text)
    text = _TELEGRAM_TOKEN_RE.sub(MASK, text)
    return _BEARER_RE.sub(lambda m: m.group(1) + MASK, text)


def mask_value(value: str | None) -> str:
    """How a secret setting is displayed: whether it is set, never its content."""
    if not value:
        return "(unset)"
    return f"*** ({len(value)} chars)"


class SecretMaskingFilter(logging.Filter):
    """Renders the message once, masks it, and freezes the result into the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        record.msg = mask(message)
        record.args = None
        return True


# sd-daemon(3) priorities: a "<N>" prefix makes journald store the line with that priority.
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalPrefixFormatter(logging.Formatter):
    """Prefixes each line with its syslog priority; journald adds the timestamp itself."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def parse_level(name: str) -> int:
    """Map LOG_LEVEL text to a logging level; raises ValueError for unknown names."""
    level = logging.getLevelName(name.strip().upper())
    if not isinstance(level, int):
        raise ValueError(name)
    return level


def setup_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Configure the root logger once: stderr, masked, journald priorities under systemd."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalPrefixFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # These libraries log request URLs (Telegram URLs carry the bot token) and are chatty: they stay at
    # WARNING even with LOG_LEVEL=DEBUG, and the filter masks what they do log either way.
    for noisy in ("httpx", "httpcore", "urllib3", "discord.http", "discord.gateway", "telegram.ext",
                  "claude_agent_sdk"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
