"""The tool sandbox of the installed package under real systemd (issue 9), in a booted Debian 12 container.

In order, against one container (module fixture): the .deb creates the tools user (in no group of the
daemon's) and its 0700 workspace, and ships the sandbox drop-in; the limits are in the unit (`systemctl
show`); with the drop-in linked, the daemon (local mode, Telegram and Anthropic fakes of this test process on
the container's loopback, `Bash` whitelisted) says "separated" in /health; a chat message whose scripted
model calls `Bash` to read /etc/aiwm/agent.env, /proc/<daemon>/environ, `env`, the state directory and the
CLI's instruction gets nothing secret: checked in the tool result the fake Anthropic receives, in the chat
reply and in the journal. The fake sees the real key (the daemon's proxy swapped it in), the CLI its token.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_daemon_realtime_work import TOOL_MARK, ToolAnthropic
from tests.fakes.anthropic import RecordedRequest
from tests.fakes.telegram import BOT_USERNAME

from .conftest import Container, record
from .container_fakes import TimedTelegram, in_netns

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

UNIT = "aiwm-agentd.service"
TOOLS_USER = "aiwm-agentd-tools"
TOKEN = "717171:systest-sandbox-telegram-secret-0123456789"
API_KEY = "sk-ant-fake-systest-sandbox-0123456789"
GROUP = -1001
TURN = 120.0
DROPIN = "/usr/share/aiwm-agentd/tool-sandbox.conf"


def tool_results(request: RecordedRequest) -> list[str]:
    texts: list[str] = []
    for message in request.body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                texts.append(inner if isinstance(inner, str) else json.dumps(inner))
    return texts


class Fakes:
    """Telegram, and an Anthropic API whose model answers the first request of a turn with one `Bash` call
    (`probe`) and the request carrying its result with "done"."""

    def __init__(self, box: Container, telegram: TimedTelegram, anthropic: ToolAnthropic) -> None:
        self.box, self.telegram, self.anthropic = box, telegram, anthropic
        anthropic.set_handler(self._script)

    def probe(self) -> str:
        pid = self.box.show(UNIT, "MainPID")["MainPID"]
        return (f"id; cat /etc/aiwm/agent.env; tr '\\0' '\\n' < /proc/{pid}/environ; ls /proc/{pid}; env; "
                "ls -la /var/lib/aiwm-agentd /var/lib/aiwm-agentd/claude; "
                "cat /var/lib/aiwm-agentd/claude/instruction.md; true")

    def _script(self, request: RecordedRequest) -> str:
        if tool_results(request):
            return "done"
        return TOOL_MARK + json.dumps({"name": "Bash", "input": {"command": self.probe(), "description": "p"}})


@pytest.fixture(scope="module")
def fakes(container: Container) -> Iterator[Fakes]:
    telegram, anthropic = TimedTelegram(TOKEN), ToolAnthropic()
    in_netns(container.pid, telegram.start)
    in_netns(container.pid, anthropic.start)
    try:
        yield Fakes(container, telegram, anthropic)
    finally:
        telegram.stop()
        anthropic.stop()


def agent_env(fakes: Fakes) -> str:
    return f"""# written by tests/system/test_sandbox.py
AIWM_ENABLED=false
LOG_LEVEL=DEBUG
AIWM_INSTRUCTION_FILE=/etc/aiwm/instruction.md
ANTHROPIC_BASE_URL={fakes.anthropic.url}
ANTHROPIC_API_KEY={API_KEY}
CLAUDE_ALLOWED_TOOLS=Bash
TELEGRAM_BOT_TOKEN={TOKEN}
TELEGRAM_GROUP_ID={GROUP}
TELEGRAM_API_BASE_URL={fakes.telegram.url}
"""


def health(box: Container) -> dict[str, Any]:
    proc = box.sh("aiwm-agentd status --json", check=False)
    try:
        return dict(json.loads(proc.stdout))
    except ValueError:
        return {}


def test_install_creates_the_tools_user_and_its_workspace(container: Container, packages: dict[str, Any]) -> None:
    box = container
    shutil.copy(packages["deb"], box.root / "root/aiwm-agentd.deb")
    box.sh("dpkg -i /root/aiwm-agentd.deb", timeout=300)
    assert box.out(f"getent passwd {TOOLS_USER} | cut -d: -f6,7") == "/var/lib/aiwm-agentd-tools:/usr/sbin/nologin"
    assert box.out(f"id -nG {TOOLS_USER}") == TOOLS_USER  # in no group of the daemon's
    assert box.out("stat -c '%U:%G %a' /var/lib/aiwm-agentd-tools") == f"{TOOLS_USER}:{TOOLS_USER} 700"
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in box.out(f"cat {DROPIN}")


def test_limits_are_in_the_unit(container: Container) -> None:
    props = container.show(UNIT, "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec", "LimitCORE", "IPAddressDeny",
                           "IPAddressAllow")
    assert props["MemoryMax"] == str(2 * 1024**3) and props["TasksMax"] == "512", props
    assert props["CPUQuotaPerSecUSec"] == "2s" and props["LimitCORE"] == "0", props
    assert "0.0.0.0/0" in props["IPAddressDeny"] or props["IPAddressDeny"] in ("any", "0.0.0.0/0 ::/0"), props
    assert "169.254." not in props["IPAddressAllow"] and "fe80" not in props["IPAddressAllow"], props
    assert "169.255.0.0/16" in props["IPAddressAllow"], props


def test_without_the_dropin_the_daemon_says_it_is_not_separated(container: Container, fakes: Fakes) -> None:
    box = container
    box.write("/etc/aiwm/agent.env", agent_env(fakes), mode="0640", owner="root:aiwm-agentd")
    box.write("/etc/aiwm/instruction.md", "SYSTEST-SANDBOX-INSTRUCTION", mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl start {UNIT}", timeout=120)
    sandbox = box.wait_for("the runner's sandbox in /health", lambda: health(box).get("sandbox"), timeout=60)
    assert sandbox["separated"] is False and "CAP_SETUID" in sandbox["detail"], sandbox
    log = "\n".join(e["MESSAGE"] for e in box.journal(UNIT))
    assert len(re.findall(r"tool sandbox off", log)) == 1, log[-2000:]


def test_bash_tool_in_the_sandbox_reads_no_secret(container: Container, fakes: Fakes) -> None:
    box = container
    box.sh(f"mkdir -p /etc/systemd/system/{UNIT}.d && ln -sf {DROPIN} /etc/systemd/system/{UNIT}.d/ && "
           f"systemctl daemon-reload && systemctl restart {UNIT}", timeout=120)
    sandbox = box.wait_for("separated in /health",
                           lambda: (health(box).get("sandbox") or {}).get("separated"), timeout=60)
    assert sandbox is True
    box.wait_for("the telegram bot polling",
                 lambda: ((health(box).get("workers") or {}).get("telegram") or {}).get("state") == "ok",
                 timeout=60)
    fakes.telegram.inject_message(GROUP, f"@{BOT_USERNAME} probe the sandbox")
    fakes.telegram.wait_for_sent(1, TURN)
    assert fakes.telegram.texts()[-1] == "done", fakes.telegram.texts()
    requests = fakes.anthropic.message_requests()
    results = "\n".join(t for r in requests for t in tool_results(r))
    uid = box.out(f"id -u {TOOLS_USER}")
    assert f"uid={uid}({TOOLS_USER})" in results, results
    assert "Permission denied" in results and "No such file or directory" in results, results
    for secret in (API_KEY, TOKEN, "SYSTEST-SANDBOX-INSTRUCTION"):
        assert secret not in results, secret
    assert all(r.headers.get("x-api-key") == API_KEY for r in requests)
    assert "SYSTEST-SANDBOX-INSTRUCTION" in requests[0].system_text
    journal = "\n".join(e["MESSAGE"] for e in box.journal(UNIT))
    assert API_KEY not in journal and TOKEN not in journal
    record("sandbox_separated_turn_requests", len(requests))


def test_stop_leaves_no_process_of_the_tools_user(container: Container) -> None:
    box = container
    box.sh(f"systemctl stop {UNIT}", timeout=60)
    assert box.out(f"pgrep -u {TOOLS_USER} || true") == ""
    workspace = box.out("ls /var/lib/aiwm-agentd-tools/aiwm-agentd")
    assert workspace.split() == ["config", "home", "run", "work"], workspace
    assert box.out("stat -c '%U %a' /var/lib/aiwm-agentd-tools/aiwm-agentd/run/instruction.md") == f"{TOOLS_USER} 600"
