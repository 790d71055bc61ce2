"""Value parsers shared by the env file and the controller's `settings`, and the one error type.

Each parser takes whatever arrived (env text, or JSON from the controller: numbers may be strings, id lists
may be arrays or comma-separated text) and returns the typed value or raises `ValueError(expected form)`.
The caller decides what a failure means: fatal for the env (`ConfigError`, exit 78), a warning for the
controller. Keeping the expected form in the exception is what makes every message name the right key.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiwm_agentd import logs
from aiwm_agentd.controller.wire import WireError, split_ids

EX_CONFIG = 78  # sysexits EX_CONFIG: systemd's RestartPreventExitStatus keeps a bad file from looping
PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions", "dontAsk")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """One clear line: which setting, what was expected, what was found."""

    def __init__(self, key: str, expected: str, got: object = None, secret: bool = False) -> None:
        self.key = key
        self.expected = expected
        shown = "" if got is None else (" (value hidden)" if secret else f", got {got!r}")
        super().__init__(f"{key}: expected {expected}{shown}")


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def parse_seconds(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        raise ValueError("a number of seconds (decimals allowed)") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("a positive number of seconds")
    return number


def parse_milliseconds(value: Any) -> float:
    """Milliseconds in, seconds out: the controller's `assistant_idleTimeoutMs` fills a seconds field."""
    try:
        return parse_seconds(value) / 1000.0
    except ValueError:
        raise ValueError("a positive number of milliseconds") from None


def parse_positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a positive whole number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("a positive whole number") from None
    if number <= 0:
        raise ValueError("a positive whole number")
    return number


def parse_text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("a string")
    return str(value).strip()


def parse_url_text(value: Any) -> str:
    """The controller URL as written, minus a trailing slash; checked only when the controller is used."""
    return parse_text(value).rstrip("/")


def parse_ids(value: Any) -> tuple[str, ...]:
    try:
        return split_ids(value, "ids")
    except WireError:
        raise ValueError("a list of ids or a comma-separated string") from None


def parse_permission_mode(value: Any) -> str:
    text = parse_text(value)
    if text not in PERMISSION_MODES:
        raise ValueError("one of " + ", ".join(PERMISSION_MODES))
    return text


def _parse_url(value: Any, schemes: tuple[str, ...], expected: str) -> str:
    text = parse_text(value).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(expected)
    return text


def parse_http_url(value: Any) -> str:
    return _parse_url(value, ("http", "https"), "an http:// or https:// URL")


def parse_ws_url(value: Any) -> str:
    return _parse_url(value, ("ws", "wss"), "a ws:// or wss:// URL")


def parse_health_addr(value: Any) -> tuple[str, int] | None:
    text = parse_text(value)
    if text.lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("HOST:PORT (e.g. 127.0.0.1:9464) or 'off'")
    return host, int(port)


def format_host_port(host: str, port: int) -> str:
    """HOST:PORT for a URL: IPv6 literals in brackets (`[::1]:9464`), the inverse of parse_health_addr."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_log_level(value: Any) -> str:
    text = parse_text(value).upper()
    try:
        logs.parse_level(text)
    except ValueError:
        raise ValueError("one of " + ", ".join(LOG_LEVELS)) from None
    return text


def parse_path(value: Any) -> Path:
    return Path(parse_text(value))


def parse_pem_file(value: Any) -> str:
    """A CA bundle must exist now: finding out at the first TLS handshake would be too late to say why."""
    text = parse_text(value)
    if not Path(text).is_file():
        raise ValueError("a readable PEM file")
    return text


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_without_password(url: str) -> str:
    """`https://user:***@host`: how a controller URL is shown, since its password is a secret."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", f":{logs.MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
