"""Work offers parsed from heartbeat answers, and the journal that resumes a task after a restart."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aiwm_agentd.controller.work import WorkJournal, WorkOffer, ignored_task, parse_offer


def test_a_work_offer_carries_the_system_message_and_the_task() -> None:
    offer = parse_offer({"systemMessage": "Hãy gọi mcp__Builtin__StartWork.",
                         "work": {"id": "w1", "title": "Ship it", "type": "task", "status": "todo",
                                  "priorityLevel": 2}})
    assert offer is not None
    assert (offer.key, offer.kind, offer.work_id, offer.title) == ("work:w1:todo", "work", "w1", "Ship it")
    assert offer.prompt.startswith("Hãy gọi mcp__Builtin__StartWork.")
    assert "id: w1" in offer.prompt and "priorityLevel: 2" in offer.prompt


def test_system_task_work_and_reminders() -> None:
    work = parse_offer({"systemTask": {"type": "work", "id": "w2", "title": "T"}})
    assert work is not None and work.key == "work:w2:"
    reminders = parse_offer({"systemMessage": "Do these.", "systemTask": {
        "type": "reminders", "reminders": [{"id": "r1", "content": "water the plants"}, {"id": "r2"}]}})
    assert reminders is not None and reminders.key == "reminders:r1,r2" and reminders.kind == "reminders"
    assert "(r1) water the plants" in reminders.prompt


def test_nothing_to_do() -> None:
    assert parse_offer({"success": True}) is None
    assert parse_offer({"work": {"title": "no id"}}) is None
    assert parse_offer({"systemTask": {"type": "reminders", "reminders": []}}) is None
    assert parse_offer({"systemTask": {"type": "inbox"}}) is None
    assert ignored_task({"systemTask": {"type": "alert"}}) == "alert"
    assert ignored_task({"systemTask": {"type": "work"}}) == ""


def test_journal_round_trip_is_private_and_clears(tmp_path: Path) -> None:
    journal = WorkJournal(tmp_path / "state")
    assert journal.load() is None
    offer = WorkOffer("work:w1:todo", "work", "w1", "Ship it", "do it")
    journal.save(offer)
    assert journal.load() == offer
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600
    journal.clear()
    assert journal.load() is None and not journal.path.exists()
    journal.clear()  # twice is fine


def test_a_damaged_journal_is_not_resumed(tmp_path: Path) -> None:
    journal = WorkJournal(tmp_path)
    journal.path.write_text("{not json")
    assert journal.load() is None
    journal.path.write_text('{"key": ""}')
    assert journal.load() is None
