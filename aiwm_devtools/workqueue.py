"""The dev controller's work queue: next-work semantics, the circuit breaker and the MCP work tools.

As on a v5+ controller (spec/aiwm-realtime.md section 4): an `idle` heartbeat gets the next `todo` item with a
`systemMessage` naming the `mcp__Builtin__*` tools to call; `in_progress`, `review`, `blocked` and `done` items
are not offered; the same item offered more than `retry_limit` times trips the circuit breaker (the agent is
put to sleep, `tripped` says which item); the model moves items with the MCP tools `StartWork`,
`RequestReviewForWork`, `CompleteWork`, `BlockWork` (each call is recorded with the agent it was made as).
Thread-safe.
"""

from __future__ import annotations

import copy
import secrets
import threading
from typing import Any

SYSTEM_MESSAGE = ("You have been assigned a work item. First call mcp__Builtin__StartWork with its workId, do "
                  "the work, then call mcp__Builtin__RequestReviewForWork (or mcp__Builtin__CompleteWork). If you "
                  "cannot finish it, call mcp__Builtin__BlockWork with the reason.")

TRANSITIONS = {  # tool -> (statuses it may move from, the status it sets)
    "StartWork": (("todo", "blocked"), "in_progress"),
    "RequestReviewForWork": (("in_progress",), "review"),
    "CompleteWork": (("in_progress", "review"), "done"),
    "BlockWork": (("todo", "in_progress"), "blocked"),
}


def tool_definitions() -> list[dict[str, Any]]:
    schema = {"type": "object", "properties": {"workId": {"type": "string"}, "reason": {"type": "string"}},
              "required": ["workId"]}
    return [{"name": name, "description": f"Move a work item with {name}.", "inputSchema": schema}
            for name in TRANSITIONS]


class WorkQueue:
    def __init__(self, retry_limit: int = 3) -> None:
        self.retry_limit = retry_limit
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._offers: dict[str, int] = {}
        self._calls: list[dict[str, Any]] = []
        self.tripped = ""  # the item that tripped the circuit breaker ("" = never)
        self.read_only = False  # the agent has the viewer role: transitions are refused

    def assign(self, title: str, priority: int = 2, kind: str = "task") -> str:
        work_id = secrets.token_hex(12)
        with self._lock:
            self._items.append({"id": work_id, "title": title, "type": kind, "status": "todo",
                                "priorityLevel": priority})
        return work_id

    @staticmethod
    def agent_can_work(heartbeat: dict[str, Any]) -> bool:
        """The controller withholds work from an agent that says its MCP is down or lacks the work tools
        (priority <= 3 needs StartWork + BlockWork); an agent that says nothing is not checked."""
        if heartbeat.get("mcpConnected") is False:
            return False
        functions = heartbeat.get("availableFunctions")
        if isinstance(functions, list):
            return {"mcp__Builtin__StartWork", "mcp__Builtin__BlockWork"} <= set(functions)
        return True

    def next_offer(self) -> dict[str, Any] | None:
        """The answer fields for an idle heartbeat (None: nothing to offer, or the breaker tripped)."""
        with self._lock:
            if self.tripped:
                return None
            item = next((i for i in self._items if i["status"] == "todo"), None)
            if item is None:
                return None
            count = self._offers[item["id"]] = self._offers.get(item["id"], 0) + 1
            if count > self.retry_limit:
                self.tripped = item["id"]
                return None
            return {"work": copy.deepcopy(item), "systemMessage": SYSTEM_MESSAGE}

    def call_tool(self, name: str, arguments: Any, agent_id: str) -> tuple[bool, str]:
        """An MCP tools/call: (ok, text for the model)."""
        args = arguments if isinstance(arguments, dict) else {}
        work_id = str(args.get("workId") or "")
        with self._lock:
            self._calls.append({"tool": name, "workId": work_id, "agent": agent_id, "args": copy.deepcopy(args)})
            if name not in TRANSITIONS:
                return False, f"unknown tool {name}"
            if self.read_only:
                return False, "You do not have permission to update this work."
            item = next((i for i in self._items if i["id"] == work_id), None)
            if item is None:
                return False, f"work {work_id!r} not found"
            sources, target = TRANSITIONS[name]
            if item["status"] not in sources:
                return False, f"work {work_id} is {item['status']}: {name} is not allowed"
            item["status"] = target
            return True, f"work {work_id} is now {target}"

    def status(self, work_id: str) -> str:
        with self._lock:
            return next((i["status"] for i in self._items if i["id"] == work_id), "")

    def offers(self, work_id: str) -> int:
        with self._lock:
            return self._offers.get(work_id, 0)

    @property
    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._calls)
