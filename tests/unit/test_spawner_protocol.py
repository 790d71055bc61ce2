"""The tools spawner's wire format and pure helpers: frames, run-dir substitution, per-group RSS from /proc."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from aiwm_agentd.sandbox.spawn_client import MAX_MESSAGE, FrameReader, encode, spawn_request
from aiwm_agentd.sandbox.spawner import group_rss, listener_from_systemd, substitute


def test_frames_survive_any_split() -> None:
    data = encode({"op": "spawn", "argv": ["x"]}) + encode({"exit": 3})
    reader = FrameReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i:i + 1])
    assert got == [{"op": "spawn", "argv": ["x"]}, {"exit": 3}] and reader.pending == 0


def test_an_oversized_or_non_object_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        FrameReader().feed(struct.pack(">I", MAX_MESSAGE + 1))
    with pytest.raises(ValueError, match="not a JSON object"):
        FrameReader().feed(struct.pack(">I", 2) + b"[]")


def test_the_request_carries_only_allowed_variables_and_the_files(tmp_path: Path) -> None:
    instruction = tmp_path / "i.md"
    instruction.write_text("INSTR")
    environ = {"AIWM_SANDBOX_CLI": "/cli", "AIWM_SANDBOX_INSTRUCTION": str(instruction), "PATH": "/bin",
               "AIWM_AGENT_SECRET": "s3cret", "DISCORD_BOT_TOKEN": "t0ken", "ANTHROPIC_API_KEY": "child-token"}
    request = spawn_request(environ, ["--flag"])
    assert request["argv"] == ["/cli", "--flag"]
    assert request["env"] == {"PATH": "/bin", "ANTHROPIC_API_KEY": "child-token"}
    assert request["files"] == {"instruction.md": "INSTR"}
    assert "s3cret" not in str(request) and "t0ken" not in str(request)


def test_only_a_leading_run_prefix_is_replaced() -> None:
    assert substitute("@run@/mcp.json", Path("/ws/run/7")) == "/ws/run/7/mcp.json"
    assert substitute("x@run@/mcp.json", Path("/ws/run/7")) == "x@run@/mcp.json"


def test_group_rss_sums_each_process_group(tmp_path: Path) -> None:
    def proc(pid: int, pgrp: int, rss_pages: int, comm: str = "node (x) y") -> None:
        (tmp_path / str(pid)).mkdir()
        rest = ["S", "1", str(pgrp)] + ["0"] * 18 + [str(rss_pages)] + ["0"] * 5
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest[0:]) + "\n")

    proc(10, 10, 100)
    proc(11, 10, 50)
    proc(20, 20, 7)
    proc(30, 99, 1000)
    (tmp_path / "self").mkdir()
    import os

    page = os.sysconf("SC_PAGE_SIZE")
    assert group_rss({10, 20}, proc=str(tmp_path)) == {10: 150 * page, 20: 7 * page}


def test_no_socket_activation_for_another_pid() -> None:
    assert listener_from_systemd({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) is None
    assert listener_from_systemd({}) is None
