"""Assigned work: what a heartbeat answer offers, and the one task in progress kept in the state directory.

A v5+ controller answers an `idle` heartbeat with `work` / `systemMessage` / `systemTask`
(spec/aiwm-realtime.md section 4). The model does the work and reports progress itself through the
controller's MCP tools (`mcp__Builtin__StartWork`, `RequestReviewForWork`, `CompleteWork`, `BlockWork`,
`DoneReminder`); the daemon's part is to start each task once, report `busy` at once and `idle` the moment the
turn ends (the controller's circuit breaker puts an agent that is offered the same task more than 3 times to
sleep for 4 h), and to remember a task in progress across a restart (`in_progress` work is never offered
again). `parse_offer` is pure; `WorkJournal` is the one file it needs (`work.json`, written atomically).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("aiwm_agentd.controller.work")

IGNORED_TASKS = ("inbox", "alert")  # reserved by the controller: nothing sends them yet


@dataclass(frozen=True)
class WorkOffer:
    """One task to carry out. `key` identifies it for dedupe: the same key is never started twice."""

    key: str  # "work:<id>:<status>" or "reminders:<id>,<id>"
    kind: str  # "work" | "reminders"
    work_id: str
    title: str
    prompt: str  # what the model is given: the controller's systemMessage plus the task's own fields

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> WorkOffer | None:
        if not isinstance(data, Mapping):
            return None
        fields = ("key", "kind", "work_id", "title", "prompt")
        if not all(isinstance(data.get(f), str) for f in fields) or not data["key"]:
            return None
        return cls(**{f: data[f] for f in fields})


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_offer(body: Mapping[str, Any]) -> WorkOffer | None:
    """The task a heartbeat answer offers, or None. The key includes the work's status, so a task that comes
    back in another state (review, blocked: priority 4/5) is a new task, while the same offer repeated is not."""
    message = _text(body.get("systemMessage"))
    work = body.get("work")
    task = body.get("systemTask")
    if isinstance(work, Mapping) and work.get("id"):
        work_id, status = str(work["id"]), _text(work.get("status"))
        title = _text(work.get("title"))
        details = ", ".join(f"{k}: {work[k]}" for k in ("id", "title", "type", "status", "priorityLevel")
                            if work.get(k) not in (None, ""))
        prompt = "\n\n".join(p for p in (message, f"Assigned work ({details}).") if p)
        return WorkOffer(f"work:{work_id}:{status}", "work", work_id, title, prompt)
    if isinstance(task, Mapping):
        kind = _text(task.get("type"))
        if kind == "work" and task.get("id"):
            work_id = str(task["id"])
            title = _text(task.get("title"))
            prompt = "\n\n".join(p for p in (message, f"Assigned work (id: {work_id}, title: {title}).") if p)
            return WorkOffer(f"work:{work_id}:", "work", work_id, title, prompt)
        if kind == "reminders":
            reminders = [r for r in task.get("reminders") or [] if isinstance(r, Mapping) and r.get("id")]
            if not reminders:
                return None
            ids = ",".join(str(r["id"]) for r in reminders)
            lines = "\n".join(f"- ({r['id']}) {_text(r.get('content'))}" for r in reminders)
            prompt = "\n\n".join(p for p in (message, f"Reminders to carry out, then mark each done:\n{lines}")
                                 if p)
            return WorkOffer(f"reminders:{ids}", "reminders", "", "reminders", prompt)
    return None


def without_datetime(prompt: str) -> str:
    """An instruction without its `Datetime:` line: v6 re-renders the prompt (with the current time inside
    `<runtime>`) for every heartbeat, which alone is no change."""
    return "\n".join(line for line in prompt.splitlines() if not line.strip().startswith("Datetime:"))


def ignored_task(body: Mapping[str, Any]) -> str:
    """The type of a reserved systemTask (inbox, alert) that is logged and ignored, else ""."""
    task = body.get("systemTask")
    kind = _text(task.get("type")) if isinstance(task, Mapping) else ""
    return kind if kind in IGNORED_TASKS else ""


class WorkJournal:
    """The task in progress, in `<state dir>/work.json`: written before the turn starts, removed when it ends,
    read once at start-up to resume a task that a stop or a crash interrupted."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "work.json"

    def load(self) -> WorkOffer | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read the work journal %s (%s); not resuming", self.path, exc)
            return None
        offer = WorkOffer.from_json(data)
        if offer is None:
            log.warning("the work journal %s is not a task; ignored", self.path)
        return offer

    def save(self, offer: WorkOffer) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(offer.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the work journal %s (%s): the task will not resume after a restart",
                        self.path, exc)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the work journal %s (%s)", self.path, exc)
