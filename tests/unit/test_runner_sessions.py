"""The session store: persistence, atomic replacement, bad files, threads; and the failure wording."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from aiwm_agentd.runner import failures
from aiwm_agentd.runner.sessions import SessionStore


def test_set_get_delete_survive_a_new_instance(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions")
    assert store.get("telegram:1") is None
    store.set("telegram:1", "sid-a")
    store.set("discord:2:9", "sid-b")
    again = SessionStore(tmp_path / "sessions")
    assert again.all() == {"telegram:1": "sid-a", "discord:2:9": "sid-b"}
    assert again.delete("telegram:1") and not again.delete("telegram:1")
    assert SessionStore(tmp_path / "sessions").all() == {"discord:2:9": "sid-b"}


def test_write_replaces_the_file_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(tmp_path)
    store.set("a", "one")
    before = store.path.read_text()
    inode = store.path.stat().st_ino
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        # at the moment of the rename the old file is still whole and the new one complete
        assert json.loads(Path(dst).read_text()) == json.loads(before)
        assert json.loads(Path(src).read_text())["b"]["session_id"] == "two"
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.set("b", "two")
    assert len(replaced) == 1 and store.path.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["sessions.json"]  # no temp file left
    assert os.stat(store.path).st_mode & 0o777 == 0o600


def test_failed_write_keeps_the_old_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(tmp_path)
    store.set("a", "one")

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    store.set("a", "two")  # logged, not raised
    monkeypatch.undo()
    assert SessionStore(tmp_path).get("a") == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["sessions.json"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"a": 5, "b": {"session_id": "ok"}}'])
def test_bad_file_is_survived(tmp_path: Path, content: str) -> None:
    (tmp_path / "sessions.json").write_text(content)
    store = SessionStore(tmp_path)
    assert store.get("a") is None
    assert store.get("b") == ("ok" if "ok" in content else None)
    store.set("c", "new")
    assert SessionStore(tmp_path).get("c") == "new"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)

    def write(n: int) -> None:
        for i in range(20):
            store.set(f"conv{n}:{i}", f"sid{n}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(SessionStore(tmp_path).all()) == 80


@pytest.mark.parametrize(("text", "status", "code"), [
    ("Not logged in · Please run /login", None, "no_credentials"),
    ("API Error: 401 invalid x-api-key", 401, "no_credentials"),
    ("API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)", None,
     "unreachable"),
    ("API Error: 529 overloaded", 529, "api_error"),
    ("API Error: 429 rate limited", 429, "api_error"),
    ("Command failed with exit code 1", None, "crashed"),
])
def test_failures_are_classified(text: str, status: int | None, code: str) -> None:
    failure = failures.classify(text, status)
    assert failure.code == code
    assert "Error" not in failure.text and "exit code" not in failure.text


def test_timeout_text_names_the_limit() -> None:
    assert "300 seconds" in failures.timeout(300.0).text
