"""Logging to stderr for journald, with every secret masked.

Secrets are registered by value (`register_secret`) as soon as they are read from the env file or the
controller; the `SecretMaskingFilter` then replaces them in every record, together with anything shaped
like a JWT or a Telegram bot token, so no code path has to remember to mask.

A secret also leaves the process encoded: in a URL query (percent-encoded), in a JSON string (escaped), in an
HTTP Basic header or a data blob (base64). Each registered value is therefore masked in those forms too
(`encoded_forms`), and the password of any `scheme://user:password@host` URL is masked whether or not it was
registered. The same `mask()` is the backstop for every other output surface (chat replies, /status).

Crash tracebacks go the same way (`install_excepthooks`): Python's default hooks print them straight to
stderr, unmasked. Lines that say why the daemon cannot run (`print_fatal`) carry journald's "error"
priority, so `journalctl -p err -u aiwm-agentd` shows them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import threading
import traceback
from types import TracebackType
from typing import TextIO
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_SECRET_LEN = 6

_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
# Not `\b`: in Bot API URLs the token follows "/bot" directly, and it may end in "-".
_TELEGRAM_TOKEN_RE = re.compile(r"(?<![0-9])\d{5,}:[A-Za-z0-9_-]{30,}(?![A-Za-z0-9_-])")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
# The password of `scheme://user:password@host...`: everything between the first ":" of the userinfo and "@".
_URL_PASSWORD_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:]*):[^\s/?#@]+@")
# A base64 run shorter than this is not masked: too little of the secret to matter, too likely a false hit.
_MIN_ENCODED_LEN = 8

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_forms: tuple[str, ...] = ()  # every registered value in every encoded form, longest first


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that encode `raw` alone, wherever it sits in a longer encoded blob.

    A byte string inside a blob starts at offset 0, 1 or 2 of a 3-byte group, and each alignment gives
    different characters; the first and last characters of each alignment also carry bits of the
    neighbouring bytes, so only the characters made purely of `raw`'s bits are kept.
    """
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        start = (offset * 8 + 5) // 6  # first character with no bit of the prefix
        end = ((offset + len(raw)) * 8) // 6  # characters past this also hold bits of what follows
        core = encoded[start:end]
        if len(core) >= _MIN_ENCODED_LEN:
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))  # the URL-safe alphabet
    return cores


def encoded_forms(value: str) -> set[str]:
    """`value` as it appears percent-encoded, JSON-escaped and base64-encoded (std and URL-safe)."""
    forms = {value, quote(value, safe=""), quote_plus(value), quote(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]}
    forms |= _base64_cores(value.encode())
    return {f for f in forms if f}


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is masked wherever it would be logged, in its encoded forms too."""
    global _secrets, _forms
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets = _secrets | {value}
        # Longest first, so a secret containing another is masked whole.
        _forms = tuple(sorted(set(_forms) | encoded_forms(value), key=lambda f: (-len(f), f)))


def mask_url_credentials(text: str) -> str:
    """`https://user:***@host`: the password of every URL in `text`, registered or not."""
    if "@" not in text or "://" not in text:  # the common case, without running the regex
        return text
    return _URL_PASSWORD_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def mask(text: str) -> str:
    """Return `text` with every registered secret (in its encoded forms too), every URL password and
    token-shaped string replaced by `***`."""
    # Plain substring tests: one C-level scan per form, measurably cheaper than one big alternation regex
    # (benchmarks/bench_mask.py), and secrets are rarely present at all.
    for form in _forms:
        if form in text:
            text = text.replace(form, MASK)
    text = mask_url_credentials(text)
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


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default stderr) is connected to journald, as sd_journal_stream_fd(3) defines it.

    systemd sets JOURNAL_STREAM="DEVICE:INODE" of the stream it connected; the variable is inherited by every
    child, so only a matching fstat() of our own stderr proves the "<N>" priority prefixes will be read.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        expected = (int(device), int(inode))
        fd = (stream if stream is not None else sys.stderr).fileno()
        status = os.fstat(fd)
    except (AttributeError, ValueError, OSError):  # unset/garbled variable, no stderr, a stream without fd
        return False
    return (status.st_dev, status.st_ino) == expected


def print_fatal(message: str) -> None:
    """Write why the daemon cannot go on to stderr: masked, at journald priority "err" under systemd."""
    stream = sys.stderr
    if stream is None:
        return
    lines = mask(message).splitlines() or [""]
    prefix = f"<{_JOURNAL_PRIORITY[logging.ERROR]}>" if stderr_is_journal(stream) else ""
    try:
        stream.write("".join(f"{prefix}{line}\n" for line in lines))
        stream.flush()
    except (OSError, ValueError):  # stderr closed or gone: nothing else can be told
        pass


_crash_log = logging.getLogger("aiwm_agentd.crash")


def _log_crash(
    what: str,
    exc_type: type[BaseException],
    exc_value: BaseException | None,
    exc_traceback: TracebackType | None,
) -> None:
    # The traceback is rendered and masked here, not left to a handler: without a configured handler
    # logging's last-resort handler would print it as it is.
    text = "".join(traceback.format_exception(exc_type, exc_value, exc_traceback)).rstrip("\n")
    _crash_log.error("%s\n%s", what, mask(text))


def _sys_excepthook(
    exc_type: type[BaseException], exc_value: BaseException, exc_traceback: TracebackType | None
) -> None:
    _log_crash("uncaught exception", exc_type, exc_value, exc_traceback)


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):  # silent, as with the default hook
        return
    name = args.thread.name if args.thread is not None else "unknown"
    _log_crash(f"uncaught exception in thread {name}", args.exc_type, args.exc_value, args.exc_traceback)


def install_excepthooks() -> None:
    """Route crash tracebacks of the main thread and of every other thread through the masked logging."""
    sys.excepthook = _sys_excepthook
    threading.excepthook = _threading_excepthook


def setup_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Configure the root logger once: stderr, masked, journald priorities under systemd."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretMaskingFilter())
    if stderr_is_journal(stream):
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
