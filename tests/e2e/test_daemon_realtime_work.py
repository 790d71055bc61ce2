"""Assigned work through the whole daemon: the dev controller's work queue offers a task in the answer to an idle
REST heartbeat; the daemon runs it as a Claude turn (real CLI) whose model, scripted by a fake Anthropic API
that answers with `tool_use` blocks, calls the controller's MCP tools `StartWork` then
`RequestReviewForWork` with the agent's current JWT. `busy` goes out at once, `idle` right after the turn,
the task is never offered past the circuit breaker, and a SIGTERM mid-task resumes it after the restart and
finishes it once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import anthropic as fake_anthropic
from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest
from tests.fakes.faulty_controller import FaultyController
from tests.harness import Daemon, assert_no_secrets, controller_env, wait_for

API_KEY = "sk-ant-e2e-work-key-737373"
TURN = 60.0
TOOLS = ["mcp__Builtin__StartWork", "mcp__Builtin__RequestReviewForWork", "mcp__Builtin__CompleteWork",
         "mcp__Builtin__BlockWork"]
TOOL_MARK = "TOOL_USE:"

pytestmark = pytest.mark.slow


class _ToolHandler(fake_anthropic._RequestHandler):
    """Streams a `tool_use` block when the scripted text starts with TOOL_MARK."""

    def _stream(self, text: str, model: str) -> None:
        if not text.startswith(TOOL_MARK):
            super()._stream(text, model)
            return
        call = json.loads(text[len(TOOL_MARK):])
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        start = fake_anthropic._message("", model, None)
        block = {"type": "tool_use", "id": f"toolu_{int(time.monotonic() * 1e6)}", "name": call["name"],
                 "input": {}}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(call["input"])}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                               "usage": {"output_tokens": 5}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


class ToolAnthropic(FakeAnthropic):
    handler_class = _ToolHandler


def tool_results(request: RecordedRequest) -> int:
    count = 0
    for message in request.body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
    return count


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.anthropic = ToolAnthropic().start()
        self.anthropic.set_handler(self._script)
        self.first_delay = 0.0
        self.ctl = FaultyController(version="v5", bcrypt_rounds=4).start()
        self.ctl.set_instruction("You are the working agent.", [])
        self.ctl.set_mcp(True)
        self.ctl.set_allowed_functions(TOOLS)
        self.env = controller_env(self.ctl, ANTHROPIC_BASE_URL=self.anthropic.url, ANTHROPIC_API_KEY=API_KEY,
                                  AIWM_TAKE_WORK="true", AIWM_SHUTDOWN_TIMEOUT="3",
                                  AIWM_STATE_DIR=str(tmp_path / "state"))
        self.daemons: list[Daemon] = []

    def start_daemon(self) -> Daemon:
        run = self.tmp / f"run{len(self.daemons)}"
        run.mkdir()
        daemon = Daemon(run, self.env)
        self.daemons.append(daemon)
        daemon.wait_ready()
        return daemon

    def _script(self, request: RecordedRequest) -> FakeReply:
        prompt = " ".join(request.user_texts)
        match = re.search(r"id: ([0-9a-f]{24})", prompt)
        if match is None:
            return FakeReply(text=f"echo: {request.last_user_text}")
        work_id, step = match.group(1), tool_results(request)
        if step == 0:
            return FakeReply(text=TOOL_MARK + json.dumps({"name": "mcp__Builtin__StartWork",
                                                          "input": {"workId": work_id}}), delay=self.first_delay)
        if step == 1:
            return FakeReply(text=TOOL_MARK + json.dumps({"name": "mcp__Builtin__RequestReviewForWork",
                                                          "input": {"workId": work_id}}))
        return FakeReply(text="The work is ready for review.")

    def calls(self, tool: str) -> list[dict[str, Any]]:
        return [c for c in self.ctl.work.calls if c["tool"] == tool]

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        self.anthropic.stop()
        self.ctl.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
        for daemon in r.daemons:
            if daemon.proc.poll() is None:
                code, _ = daemon.stop()
                assert code == 0
            assert_no_secrets(daemon.output(), API_KEY, r.ctl.secret)
    finally:
        r.close()


def test_assigned_work_runs_once_with_the_controller_tools_busy_then_idle(rig: Rig) -> None:
    daemon = rig.start_daemon()
    wait_for(lambda: rig.ctl.heartbeats, 10, what="a first heartbeat")
    work_id = rig.ctl.work.assign("Write a haiku")
    wait_for(lambda: rig.ctl.work.status(work_id) == "review", TURN, what="the work moved to review")
    started, reviewed = rig.calls("StartWork"), rig.calls("RequestReviewForWork")
    assert [c["workId"] for c in started] == [work_id] and [c["workId"] for c in reviewed] == [work_id]
    assert started[0]["agent"] == rig.ctl.agent_id  # the MCP call carried a valid JWT of this agent
    wait_for(lambda: rig.ctl.heartbeats[-1]["status"] == "idle" and daemon.health()["work"]["done"] == 1, 10,
             what="idle again once the turn ended")
    beats = rig.ctl.heartbeats
    offered_at = next(i for i, b in enumerate(beats) if b["status"] == "idle" and rig.ctl.work.offers(work_id))
    busy = [b for b in beats if b["status"] == "busy"]
    assert busy, "no busy heartbeat while the work ran"
    assert rig.ctl.work.offers(work_id) == 1 and not rig.ctl.work.tripped
    assert offered_at >= 0
    metrics = daemon.metrics()
    assert 'aiwm_work_started_total{resumed="false"} 1.0' in metrics
    assert 'aiwm_work_finished_total{outcome="ok"} 1.0' in metrics
    assert "aiwm_work_in_progress 0.0" in metrics
    assert not (rig.tmp / "state" / "work.json").exists()
    # After the turn's client reported its MCP servers, heartbeats tell the controller what the model can call.
    wait_for(lambda: daemon.health()["mcp"]["servers"] == {"Builtin": "connected"}, 10, what="MCP connected")
    wait_for(lambda: rig.ctl.heartbeats[-1]["mcpConnected"] is True, 5, what="mcpConnected reported")
    last = rig.ctl.heartbeats[-1]
    assert last["mcpConnected"] is True and set(TOOLS) <= set(last["availableFunctions"]), last


def test_busy_heartbeat_follows_the_offer_within_a_second(rig: Rig) -> None:
    rig.env["AIWM_HEARTBEAT_INTERVAL"] = "5"  # a busy heartbeat soon after the offer is not the schedule's
    rig.first_delay = 2.0
    rig.start_daemon()
    wait_for(lambda: rig.ctl.heartbeats, 10, what="a first heartbeat")
    work_id = rig.ctl.work.assign("Write a haiku")
    wait_for(lambda: rig.ctl.work.offers(work_id) == 1, 15, what="the offer")
    wait_for(lambda: rig.ctl.heartbeats[-1]["status"] == "busy", 5, what="busy")
    beats = rig.ctl.heartbeats
    busy_at = next(b["time"] for b in beats if b["status"] == "busy")
    offer_at = max(b["time"] for b in beats if b["status"] == "idle" and b["time"] < busy_at)
    assert busy_at - offer_at <= 1.0, busy_at - offer_at


def test_sigterm_mid_task_resumes_after_restart_and_finishes_once(rig: Rig) -> None:
    rig.first_delay = 30.0  # the first model call hangs: the task is in progress when SIGTERM comes
    first = rig.start_daemon()
    wait_for(lambda: rig.ctl.heartbeats, 10, what="a first heartbeat")
    work_id = rig.ctl.work.assign("Write a haiku")
    wait_for(lambda: (rig.tmp / "state" / "work.json").exists(), 15, what="the task journaled")
    wait_for(lambda: rig.anthropic.message_requests(), TURN, what="the turn started")
    code, _ = first.stop()
    assert code == 0
    assert (rig.tmp / "state" / "work.json").exists(), "the interrupted task must be kept"
    assert rig.calls("StartWork") == []
    rig.first_delay = 0.0
    second = rig.start_daemon()
    wait_for(lambda: rig.ctl.work.status(work_id) == "review", TURN, what="the resumed work finished")
    wait_for(lambda: second.health()["work"]["done"] == 1, 10, what="the work done after the restart")
    assert len(rig.calls("StartWork")) == 1 and len(rig.calls("RequestReviewForWork")) == 1
    assert 'aiwm_work_started_total{resumed="true"} 1.0' in second.metrics()
    assert rig.ctl.work.offers(work_id) == 1 and not rig.ctl.work.tripped
    assert not (rig.tmp / "state" / "work.json").exists()


def test_upstream_mcp_quirk_rejecting_notifications(rig: Rig) -> None:
    rig.ctl.controller.mcp_rejects_notifications = True
    daemon = rig.start_daemon()
    wait_for(lambda: rig.ctl.heartbeats, 10, what="a first heartbeat")
    work_id = rig.ctl.work.assign("Write a haiku")
    wait_for(lambda: rig.ctl.work.status(work_id) == "review", TURN, what="the work moved to review")
    wait_for(lambda: daemon.health()["mcp"]["servers"] == {"Builtin": "connected"}, 10, what="MCP connected")
    # The controller did reject the notification; the proxy answered it, so the CLI kept the server.
    assert any(r["path"] == "/mcp" and r["status"] == 400 for r in rig.ctl.requests)
    assert "the MCP proxy answers them itself" in daemon.output()
    assert [c["agent"] for c in rig.calls("StartWork")] == [rig.ctl.agent_id]
