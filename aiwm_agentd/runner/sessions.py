"""Conversation -> Claude session id, persisted so a restarted daemon resumes each conversation.

One JSON file, `<state_dir>/sessions/sessions.json`, rewritten atomically (temp file, fsync, rename, fsync of
the directory) on every change: a crash leaves either the old or the new map, never a torn one. Thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("aiwm_agentd.runner")

FILE_NAME = "sessions.json"


class SessionStore:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] = self._load()

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("session map %s unreadable (%s); conversations start fresh", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("session_id"), str)}

    def get(self, conversation: str) -> str | None:
        with self._lock:
            entry = self._entries.get(conversation)
            return str(entry["session_id"]) if entry else None

    def set(self, conversation: str, session_id: str) -> None:
        with self._lock:
            entry = self._entries.get(conversation)
            if entry is not None and entry.get("session_id") == session_id:
                return
            self._entries[conversation] = {"session_id": session_id, "updated": round(time.time(), 3)}
            self._save()

    def delete(self, conversation: str) -> bool:
        with self._lock:
            if self._entries.pop(conversation, None) is None:
                return False
            self._save()
            return True

    def all(self) -> dict[str, str]:
        with self._lock:
            return {k: str(v["session_id"]) for k, v in self._entries.items()}

    def _save(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(self._entries, indent=1, sort_keys=True).encode()
        tmp = directory / f".{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.error("could not save the session map %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)
