"""Configuration: the daemon's own settings (env file only) and the agent's immutable snapshot.

The package is organised around one table (`table.py`) that declares every key once; the modules derive
from it: `daemon.py` loads the supervisor's settings, `snapshot.py` builds the agent's configuration with
provenance, `diff.py` describes reload changes, `parsers.py` holds the value parsers and `ConfigError`.
Everything public is importable from here, as before the split.

`read_env_file` lives here rather than in a submodule because it compares against `DEFAULT_ENV_FILE`,
which callers (and tests) know as `aiwm_agentd.config.DEFAULT_ENV_FILE`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from aiwm_agentd import logs
from aiwm_agentd.config.daemon import DaemonSettings, describe_daemon_settings, load_daemon_settings
from aiwm_agentd.config.diff import describe_changes
from aiwm_agentd.config.model import AgentConfig, ClaudeConfig, PlatformConfig, Provenance
from aiwm_agentd.config.parsers import (
    EX_CONFIG,
    PERMISSION_MODES,
    ConfigError,
    format_host_port,
    is_loopback_host,
    parse_bool,
    parse_health_addr,
    parse_http_url,
    parse_ids,
    parse_log_level,
    parse_milliseconds,
    parse_path,
    parse_pem_file,
    parse_permission_mode,
    parse_positive_int,
    parse_seconds,
    parse_text,
    parse_url_text,
    parse_ws_url,
    url_without_password,
)
from aiwm_agentd.config.snapshot import build_agent_config, read_instruction_file
from aiwm_agentd.config.table import (
    DEFAULT_HEALTH_ADDR,
    DEFAULT_INSTRUCTION,
    DEFAULT_INSTRUCTION_FILE,
    DEFAULT_MODEL,
    DEFAULT_STATE_DIR,
    SECRET_ENV_KEYS,
    SETTINGS,
    Setting,
)

DEFAULT_ENV_FILE = "/etc/aiwm/agent.env"

__all__ = [
    "DEFAULT_ENV_FILE",
    "DEFAULT_HEALTH_ADDR",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_INSTRUCTION_FILE",
    "DEFAULT_MODEL",
    "DEFAULT_STATE_DIR",
    "EX_CONFIG",
    "PERMISSION_MODES",
    "SECRET_ENV_KEYS",
    "SETTINGS",
    "AgentConfig",
    "ClaudeConfig",
    "ConfigError",
    "DaemonSettings",
    "PlatformConfig",
    "Provenance",
    "Setting",
    "build_agent_config",
    "describe_changes",
    "describe_daemon_settings",
    "format_host_port",
    "is_loopback_host",
    "load_daemon_settings",
    "parse_bool",
    "parse_health_addr",
    "parse_http_url",
    "parse_ids",
    "parse_log_level",
    "parse_milliseconds",
    "parse_path",
    "parse_pem_file",
    "parse_permission_mode",
    "parse_positive_int",
    "parse_seconds",
    "parse_text",
    "parse_url_text",
    "parse_ws_url",
    "read_env_file",
    "read_instruction_file",
    "url_without_password",
]


def read_env_file(path: str | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The effective environment: the process environment overlaid by the env file.

    The file wins because under systemd the process environment is the copy taken at start, and a
    SIGHUP reload must see the operator's edits. A missing default file is fine (systemd's
    EnvironmentFile may have provided everything); a missing explicit file is a config error.
    """
    merged = dict(os.environ if environ is None else environ)
    if path is None:
        return merged
    file = Path(path)
    if not file.exists():
        if path == DEFAULT_ENV_FILE:
            return merged
        raise ConfigError("--env-file", "an existing env file", path)
    try:
        values = dotenv_values(file, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--env-file", "a readable UTF-8 env file", f"{path}: {exc}") from None
    for key, value in values.items():
        if value is not None:
            merged[key] = value
    for key in SECRET_ENV_KEYS:
        logs.register_secret(merged.get(key))
    return merged
