"""The tool sandbox of the installed package under real systemd (issue 9), in a booted Debian 12 container.

In order, against one container (module fixture): the .deb creates the tools user (in no group of the
daemon's) and its 0700 workspace, and ships the spawner's units, both units scoring <= 1.5 in
`systemd-analyze security`; the limits are in both units (`systemctl show`); with the spawner's socket
masked, the daemon (local mode, Telegram and Anthropic fakes of this test process on the container's
loopback, `Bash` whitelisted) says "tool sandbox off" once; unmasked (the default), it says "separated" in
/health, and a chat message whose scripted model calls `Bash` to read /etc/aiwm/agent.env,
/proc/<daemon>/environ, `env`, the state directory and the CLI's instruction, and to open the spawner's
socket, gets nothing secret: checked in the tool result the fake Anthropic receives, in the chat reply and in
the journal. The fake sees the real key (the daemon's proxy swapped it in), the CLI its token. Stopping the
daemon leaves no CLI; a template instance's tools run as a user of their own.
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
TOOLS_UNIT = "aiwm-agentd-tools.service"
SOCKET_UNIT = "aiwm-agentd-tools.socket"
SPAWNER_SOCKET = "/run/aiwm-agentd-tools.sock"
TOOLS_USER = "aiwm-agentd-tools"
TOKEN = "717171:systest-sandbox-telegram-secret-0123456789"
API_KEY = "sk-ant-fake-systest-sandbox-0123456789"
GROUP = -1001
TURN = 120.0


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
                "cat /var/lib/aiwm-agentd/claude/instruction.md; "
                f"python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('{SPAWNER_SOCKET}')\" "
                "2>&1 | tail -n 1; true")

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


def test_install_creates_the_tools_user_and_the_spawner_units(container: Container,
                                                              packages: dict[str, Any]) -> None:
    box = container
    shutil.copy(packages["deb"], box.root / "root/aiwm-agentd.deb")
    # An operator's link to the drop-in of earlier versions (now gone) is removed; their own files are not.
    dropins = f"/etc/systemd/system/{UNIT}.d"
    box.sh(f"mkdir -p {dropins} && ln -s /usr/share/aiwm-agentd/tool-sandbox.conf {dropins}/tool-sandbox.conf "
           f"&& echo '[Service]' > {dropins}/own.conf")
    box.sh("dpkg -i /root/aiwm-agentd.deb", timeout=300)
    assert box.out(f"ls {dropins}") == "own.conf"
    box.sh(f"rm -rf {dropins} && systemctl daemon-reload")
    assert box.out(f"getent passwd {TOOLS_USER} | cut -d: -f6,7") == "/var/lib/aiwm-agentd-tools:/usr/sbin/nologin"
    assert box.out(f"id -nG {TOOLS_USER}") == TOOLS_USER  # in no group of the daemon's
    assert box.out("stat -c '%U:%G %a' /var/lib/aiwm-agentd-tools") == f"{TOOLS_USER}:{TOOLS_USER} 700"
    for unit in (UNIT, TOOLS_UNIT, "aiwm-agentd@check.service", "aiwm-agentd-tools@check.service"):
        text = box.out(f"systemd-analyze security {unit} 2>&1 | tail -n 1")
        exposure = float(re.findall(r"level for .*: ([0-9.]+)", text)[0])
        record(f"exposure_{unit}", exposure)
        assert exposure <= 1.5, (unit, text)
    assert box.out(f"systemctl show -p CapabilityBoundingSet --value {UNIT}") == ""


def test_limits_are_in_both_units(container: Container) -> None:
    for unit in (UNIT, TOOLS_UNIT):
        props = container.show(unit, "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec", "LimitCORE", "IPAddressDeny",
                               "IPAddressAllow")
        assert props["MemoryMax"] == str(2 * 1024**3) and props["TasksMax"] == "512", props
        assert props["CPUQuotaPerSecUSec"] == "2s" and props["LimitCORE"] == "0", props
        assert "0.0.0.0/0" in props["IPAddressDeny"] or props["IPAddressDeny"] in ("any", "0.0.0.0/0 ::/0"), props
        assert "169.254." not in props["IPAddressAllow"] and "fe80" not in props["IPAddressAllow"], props
        assert "169.255.0.0/16" in props["IPAddressAllow"], props


def test_without_the_spawner_the_daemon_says_it_is_not_separated(container: Container, fakes: Fakes) -> None:
    box = container
    box.write("/etc/aiwm/agent.env", agent_env(fakes), mode="0640", owner="root:aiwm-agentd")
    box.write("/etc/aiwm/instruction.md", "SYSTEST-SANDBOX-INSTRUCTION", mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl mask --runtime {SOCKET_UNIT} && systemctl start {UNIT}", timeout=120)
    sandbox = box.wait_for("the runner's sandbox in /health", lambda: health(box).get("sandbox"), timeout=60)
    assert sandbox["separated"] is False and "unreachable" in sandbox["detail"], sandbox
    log = "\n".join(e["MESSAGE"] for e in box.journal(UNIT))
    assert len(re.findall(r"tool sandbox off", log)) == 1, log[-2000:]


def test_bash_tool_in_the_sandbox_reads_no_secret(container: Container, fakes: Fakes) -> None:
    box = container
    box.sh(f"systemctl unmask --runtime {SOCKET_UNIT} && systemctl restart {UNIT}", timeout=120)
    sandbox = box.wait_for("separated in /health",
                           lambda: (health(box).get("sandbox") or {}).get("separated"), timeout=60)
    assert sandbox is True
    assert box.out(f"stat -c '%U:%G %a' {SPAWNER_SOCKET}") == "root:aiwm-agentd 660"
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
    assert "PermissionError" in results, results  # the spawner's socket: not for the tools
    for secret in (API_KEY, TOKEN, "SYSTEST-SANDBOX-INSTRUCTION"):
        assert secret not in results, secret
    assert all(r.headers.get("x-api-key") == API_KEY for r in requests)
    assert "SYSTEST-SANDBOX-INSTRUCTION" in requests[0].system_text
    journal = "\n".join(e["MESSAGE"] for u in (UNIT, TOOLS_UNIT) for e in box.journal(u))
    assert API_KEY not in journal and TOKEN not in journal
    assert box.show(TOOLS_UNIT, "ActiveState")["ActiveState"] == "active"
    spawner_pid = box.show(TOOLS_UNIT, "MainPID")["MainPID"]
    record("spawner_rss_mib", round(int(box.out(f"ps -o rss= -p {spawner_pid}")) / 1024, 1))
    record("sandbox_separated_turn_requests", len(requests))


def test_stop_leaves_no_cli_of_the_tools_user(container: Container) -> None:
    box = container
    box.sh(f"systemctl stop {UNIT}", timeout=60)
    left = box.wait_for("only the spawner left as the tools user", lambda: [
        line for line in box.out(f"ps -u {TOOLS_USER} -o pid=,args= || true").splitlines()
        if "tools-spawner" not in line] == [] or None, timeout=15)
    assert left is True
    workspace = box.out("ls /var/lib/aiwm-agentd-tools")
    assert workspace.split() == ["config", "home", "run", "work"], workspace
    assert box.out("ls -A /var/lib/aiwm-agentd-tools/run") == ""  # per-child files removed with the child


def test_a_template_instance_has_tools_of_its_own(container: Container) -> None:
    box = container
    box.sh("systemctl start aiwm-agentd-tools@two.socket && "
           "python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('/run/aiwm-agentd-tools-two.sock')\"",
           timeout=60)
    box.wait_for("aiwm-agentd-tools@two running", lambda: box.show("aiwm-agentd-tools@two.service", "ActiveState")
                 ["ActiveState"] == "active" or None, timeout=30)
    # Type=simple is "active" at fork, before the switch to the dynamic user: wait for the exec. ps shows
    # the number: the container has no nss-systemd to name dynamic users.
    main = "$(systemctl show -p MainPID --value aiwm-agentd-tools@two.service)"
    uid = box.wait_for("the spawner running as its instance's user", lambda: box.out(
        f"ps -o uid= -p {main} || true") if "spawner" in box.out(f"ps -o args= -p {main} || true") else None,
        timeout=30)
    assert 61184 <= int(uid) <= 65519 and uid != box.out(f"id -u {TOOLS_USER}"), uid  # systemd's dynamic range
    assert box.out("stat -L -c '%u %a' /var/lib/aiwm-tools-two") == f"{uid} 700"
    # The shared tools user cannot read this instance's workspace, nor the other way round.
    denied = box.sh(f"setpriv --reuid={TOOLS_USER} --regid={TOOLS_USER} --clear-groups ls /var/lib/aiwm-tools-two/",
                    check=False)
    assert denied.returncode != 0
    box.sh("systemctl stop aiwm-agentd-tools@two.socket aiwm-agentd-tools@two.service", timeout=60)
