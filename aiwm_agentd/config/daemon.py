"""The daemon's own settings: read from the env file only, validated at start and on every SIGHUP.

The supervisor needs these before it can talk to anyone, so a bad value is fatal (`ConfigError`, exit 78)
rather than a warning: systemd then shows one line naming the key instead of a restart loop. Each key is
parsed as its table row says; the rules that span several keys (what a controller connection needs) follow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiwm_agentd import logs
from aiwm_agentd.config.model import Provenance
from aiwm_agentd.config.parsers import ConfigError, is_loopback_host, parse_http_url, url_without_password
from aiwm_agentd.config.table import DAEMON_SETTINGS, SECRET_ENV_KEYS, show_value

_AGENT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")


@dataclass(frozen=True)
class DaemonSettings:
    enabled: bool
    base_url: str
    agent_id: str
    agent_secret: str
    agent_name: str
    heartbeat_interval: float
    reconnect_interval: float
    fallback_retry_interval: float
    request_timeout: float
    connect_retries: int
    shutdown_timeout: float
    ca_bundle: str
    health_addr: tuple[str, int] | None
    state_dir: Path
    instruction_file: str
    log_level: str
    allow_insecure_http: bool
    origins: Mapping[str, str] = field(default_factory=dict)  # env name -> "env" | "default"

    @property
    def verify(self) -> bool | str:
        """What `requests` takes as `verify`: always verify, with a custom CA bundle if given."""
        return self.ca_bundle or True


def env_text(env: Mapping[str, str], key: str) -> str:
    """An env value as the operator meant it: surrounding blanks dropped, empty = unset."""
    return (env.get(key) or "").strip()


def load_daemon_settings(env: Mapping[str, str]) -> DaemonSettings:
    """Validate the supervisor's settings; raises ConfigError naming the first bad key."""
    for key in SECRET_ENV_KEYS:
        logs.register_secret(env.get(key))
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in DAEMON_SETTINGS:
        raw = env_text(env, setting.env)
        if not raw:
            values[setting.field] = setting.default_for(env)
            origins[setting.env] = "default"
            continue
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(setting.env, str(exc), raw, secret=setting.secret) from None
        origins[setting.env] = "env"
    logs.register_secret(_url_password(values["base_url"]))  # https://user:password@host would otherwise show
    if values["enabled"]:
        values["base_url"] = _check_controller_keys(values)
    return DaemonSettings(**values, origins=origins)


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _check_controller_keys(values: Mapping[str, Any]) -> str:
    """What talking to a controller needs; returns the normalised controller URL.

    Checked only when AIWM_ENABLED: local mode must start even with half-filled controller keys.
    """
    base_url = str(values["base_url"])
    if not base_url:
        raise ConfigError("AIWM_BASE_URL", "the controller URL (or AIWM_ENABLED=false for local mode)")
    try:
        base_url = parse_http_url(base_url)
    except ValueError as exc:
        raise ConfigError("AIWM_BASE_URL", str(exc), url_without_password(base_url)) from None
    host = urlsplit(base_url).hostname or ""
    if urlsplit(base_url).scheme == "http" and not is_loopback_host(host) and not values["allow_insecure_http"]:
        raise ConfigError(
            "AIWM_BASE_URL",
            "https:// for a non-loopback controller (set AIWM_ALLOW_INSECURE_HTTP=true to accept http)",
            url_without_password(base_url),
        )
    if not _AGENT_ID_RE.match(values["agent_id"]):
        raise ConfigError("AIWM_AGENT_ID", "24 hexadecimal characters (the agent's ObjectId)", values["agent_id"])
    if not values["agent_secret"]:
        raise ConfigError("AIWM_AGENT_SECRET", "the agent secret from the controller")
    return base_url


def describe_daemon_settings(settings: DaemonSettings) -> tuple[Provenance, ...]:
    """Every daemon key with its effective value (secrets masked) and origin, in table order."""
    return tuple(
        Provenance(s.env, show_value(s, getattr(settings, s.field)), settings.origins.get(s.env, "default"))
        for s in DAEMON_SETTINGS
    )
