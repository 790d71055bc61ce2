"""No message lost across a package upgrade (issue 10), on the installed package under real systemd.

One Debian 12 container (module fixture): package N installed with dpkg -i, local mode (AIWM_ENABLED=false),
Telegram pointed at the project's fake Bot API and Claude at its fake Anthropic API. Both fakes are objects of
this test process listening on the container's own loopback (container_fakes.in_netns). Then, in order:
a message is answered live (the path works); a second message's turn is held by the fake Anthropic while
package N+1 is installed (postinst: try-restart): its chat is told "restarting" during the old process's
stop, and the new process answers it exactly once with the late-answer note; the inbox journal is private to
the service user, the journal holds no traceback, and two further restarts send nothing to the chat.
Figures: the stop with a turn in flight, the catch-up delay after start (`record()`).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd.runner.failures import RESTARTING_NOTICE
from tests.fakes.anthropic import FakeAnthropic, FakeReply, RecordedRequest, echo_handler
from tests.fakes.telegram import BOT_USERNAME

from .conftest import RELEASES, SUITE, Container, record
from .container_fakes import TimedTelegram, in_netns

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

UNIT = "aiwm-agentd.service"
TOKEN = "626262:systest-inbox-telegram-secret-0123456789"
API_KEY = "sk-ant-fake-systest-inbox-0123456789"
GROUP = -1001
TURN = 90.0  # a cold Claude CLI turn under the unit's sandbox, on a loaded 2-core machine
INBOX = "/var/lib/aiwm-agentd/inbox/telegram.jsonl"
LATE = "(Late answer"


class Fakes:
    """The fake Telegram and the fake Anthropic, which answers `echo: <message>`; while `hold` is set it
    holds every turn (never answers) until the chat got the restarting notice: the old process's turn runs
    into the stop, the new process's replay is answered."""

    def __init__(self, telegram: TimedTelegram, anthropic: FakeAnthropic) -> None:
        self.telegram, self.anthropic = telegram, anthropic
        self.hold = threading.Event()
        anthropic.set_handler(self._answer)

    def _answer(self, request: RecordedRequest) -> FakeReply:
        # Decided when the request arrives; a held request stays open until stop() or the client leaves.
        if self.hold.is_set() and RESTARTING_NOTICE not in self.telegram.texts():
            return FakeReply(hang=True)
        return echo_handler(request)

    def turns(self) -> list[RecordedRequest]:
        return self.anthropic.message_requests()


@pytest.fixture(scope="module")
def fakes(container: Container) -> Iterator[Fakes]:
    telegram, anthropic = TimedTelegram(TOKEN), FakeAnthropic()
    in_netns(container.pid, telegram.start)  # both listen on the container's 127.0.0.1
    in_netns(container.pid, anthropic.start)
    try:
        yield Fakes(telegram, anthropic)
    finally:
        telegram.stop()
        anthropic.stop()


def agent_env(fakes: Fakes) -> str:
    return f"""# written by tests/system/test_inbox_upgrade.py
AIWM_ENABLED=false
LOG_LEVEL=DEBUG
ANTHROPIC_BASE_URL={fakes.anthropic.url}
ANTHROPIC_API_KEY={API_KEY}
TELEGRAM_BOT_TOKEN={TOKEN}
TELEGRAM_GROUP_ID={GROUP}
TELEGRAM_API_BASE_URL={fakes.telegram.url}
"""


def telegram_state(box: Container) -> str:
    """The telegram worker's state in the running daemon's /health ("" when it does not answer)."""
    proc = box.sh("aiwm-agentd status --json", check=False)
    try:
        workers = json.loads(proc.stdout).get("workers") or {}
    except ValueError:
        return ""
    if isinstance(workers, list):
        workers = {w.get("name"): w for w in workers}
    return str((workers.get("telegram") or {}).get("state", ""))


def wait_polling(box: Container) -> None:
    """Telegram is ok: the session is polling, and whatever the inbox held has been resubmitted."""
    box.wait_for("the telegram bot polling", lambda: telegram_state(box) == "ok", timeout=60, interval=0.5)


def main_pid(box: Container) -> str:
    return box.show(UNIT, "MainPID")["MainPID"]


def cursor(box: Container) -> str:
    entries = box.journal(UNIT)
    return entries[-1]["__CURSOR"] if entries else ""


def ask(fakes: Fakes, text: str) -> None:
    fakes.telegram.inject_message(GROUP, f"@{BOT_USERNAME} {text}")


# ------------------------------------------------------------------------------------------------ tests


def test_install_and_answer_live(container: Container, packages: dict[str, Any], fakes: Fakes) -> None:
    box = container
    shutil.copy(packages["deb"], box.root / "root/aiwm-agentd.deb")
    box.sh("dpkg -i /root/aiwm-agentd.deb", timeout=300)
    box.write("/etc/aiwm/agent.env", agent_env(fakes), mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl start {UNIT}", timeout=120)
    wait_polling(box)
    ask(fakes, "live question")
    fakes.telegram.wait_for_sent(1, TURN)
    assert fakes.telegram.texts() == ["echo: live question"]


def test_upgrade_with_a_turn_in_flight_answers_it_once_late(container: Container, fakes: Fakes,
                                                             newer_deb: Callable[[str], Path]) -> None:
    box = container
    shutil.copy(newer_deb(SUITE), box.root / "root/aiwm-agentd-2.deb")
    tg = fakes.telegram
    already = len(tg.sent)
    old_pid = main_pid(box)
    mark = cursor(box)

    fakes.hold.set()
    requests_before = len(fakes.turns())
    ask(fakes, "held question")
    box.wait_for("the held turn at the fake Anthropic", lambda: len(fakes.turns()) > requests_before,
                 timeout=TURN)

    upgrade = box.sh("dpkg -i /root/aiwm-agentd-2.deb", timeout=300)  # postinst: try-restart
    fakes.hold.clear()
    assert box.out("dpkg-query -W -f='${Version}' aiwm-agentd").endswith(f"-2{RELEASES[SUITE]}"), upgrade.stdout
    new_pid = main_pid(box)
    assert new_pid not in ("0", old_pid), (old_pid, new_pid)

    tg.wait_for_sent(already + 2, TURN)
    sent = tg.texts()[already:]
    assert sent[0] == RESTARTING_NOTICE, sent
    assert sent[1].startswith(LATE) and sent[1].endswith("echo: held question"), sent
    assert len(sent) == 2, sent

    # The notice reached the chat while the old process was stopping: after systemd began the stop,
    # before the unit was inactive (the old process gone); the late answer came from the new process.
    props = box.show(UNIT, "ActiveExitTimestampMonotonic", "InactiveEnterTimestampMonotonic",
                     "ExecMainStartTimestampMonotonic")
    stop_began = int(props["ActiveExitTimestampMonotonic"]) / 1e6
    stopped = int(props["InactiveEnterTimestampMonotonic"]) / 1e6
    new_started = int(props["ExecMainStartTimestampMonotonic"]) / 1e6
    notice_at, late_at = tg.sent_at[already], tg.sent_at[already + 1]
    assert stop_began < notice_at < stopped, (stop_began, notice_at, stopped)
    assert late_at > new_started
    record("inbox_upgrade_stop_with_turn_in_flight_seconds", stopped - stop_began)
    record("inbox_upgrade_notice_before_exit_seconds", stopped - notice_at)
    record("inbox_upgrade_catch_up_after_start_seconds", late_at - new_started)

    new = [e["MESSAGE"] for e in box.journal(UNIT, mark) if e.get("_PID") == new_pid]
    assert any(re.search(r"answering 1 message\(s\) left unanswered", m) for m in new), new[-30:]


def test_inbox_is_private_and_the_journal_clean(container: Container) -> None:
    box = container
    assert box.out(f"stat -c '%U:%G %a' {INBOX}") == "aiwm-agentd:aiwm-agentd 600"
    assert box.out(f"stat -c '%U %a' $(dirname {INBOX})") == "aiwm-agentd 700"
    messages = [e["MESSAGE"] for e in box.journal(UNIT)]
    tracebacks = ["\n".join(messages[i:i + 15]) for i, m in enumerate(messages) if "Traceback" in m]
    assert not tracebacks, "\n---\n".join(tracebacks[:2])
    assert TOKEN not in "\n".join(messages) and API_KEY not in "\n".join(messages)


def test_two_more_restarts_send_nothing(container: Container, fakes: Fakes) -> None:
    box = container
    sent, turns = len(fakes.telegram.sent), len(fakes.turns())
    for _ in range(2):
        mark = cursor(box)
        box.sh(f"systemctl restart {UNIT}", timeout=120)
        wait_polling(box)  # the replay (if any) is submitted before the bot reports ok
        log = [e["MESSAGE"] for e in box.journal(UNIT, mark)]
        assert not [m for m in log if "left unanswered" in m or "giving up" in m], log[-30:]
    time.sleep(3)  # a wrongly replayed turn would reach the fake Anthropic within a CLI start
    assert len(fakes.turns()) == turns
    assert len(fakes.telegram.sent) == sent, fakes.telegram.texts()[sent:]
