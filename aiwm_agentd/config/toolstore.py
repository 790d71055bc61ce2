"""The last tool whitelist the controller sent, kept in the state directory for when it cannot be asked.

Without it, a daemon that starts while the controller is down (fallback) would have to choose between the
CLI's whole default tool set (what it did before: fail open) and no tools at all. With it, the agent keeps
exactly the tools its controller last granted. Only tool names are stored: never a token, never an MCP
server's headers. The file is `<state_dir>/tools.json`, 0600, replaced atomically, written only when the
list changed, and only by the owner of an existing state directory (the daemon's `StateDirectory=` creates
it; `check-config` run by root or elsewhere must neither create one nor leave a file the daemon cannot
read). A store that cannot be read or written is a logged warning, never a failure: the caller falls back
to the env list, and then to no tools.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "tools.json"
log = logging.getLogger("aiwm_agentd.config.toolstore")


@dataclass(frozen=True)
class StoredTools:
    tools: tuple[str, ...] | None  # the controller's `tools`; None = it sent none
    allowed_functions: tuple[str, ...]
    saved_at: float  # wall time of the write


def store_path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of names")
    return tuple(value)


def load_tools(state_dir: Path) -> StoredTools | None:
    """The stored list, or None when there is none or it cannot be used (logged)."""
    path = store_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tools = data["tools"]
        return StoredTools(None if tools is None else _names(tools), _names(data["allowedFunctions"]),
                           float(data.get("savedAt", 0.0)))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the stored tool list %s: %s", path, exc)
        return None


def save_tools(state_dir: Path, tools: tuple[str, ...] | None, allowed_functions: tuple[str, ...],
               clock: Callable[[], float] = time.time) -> bool:
    """Keep the controller's list; True when the file was (re)written."""
    directory = Path(state_dir)
    try:
        if not directory.is_dir() or directory.stat().st_uid != os.geteuid():
            return False  # missing, or someone else's (root running check-config): the daemon's file to write
    except OSError:
        return False
    current = load_tools(directory)
    if current is not None and (current.tools, current.allowed_functions) == (tools, allowed_functions):
        return False
    payload = {"tools": None if tools is None else list(tools), "allowedFunctions": list(allowed_functions),
               "savedAt": clock()}
    path = store_path(directory)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not keep the controller's tool list in %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True
