"""The packaged daemon under real systemd (issue 5), in a booted Debian 12 container, installed with dpkg -i.

The steps run in order against one container (module fixture) and build on each other: install the .deb,
run the bundled Claude CLI under the unit's sandbox against a loopback HTTPS API, start the daemon against
the dev controller (from this repository's aiwm_devtools: not in the package; it runs inside the container,
see conftest.install_dev_controller), reload, watchdog, stop, a bad
env value (status 78, no restart), a second agent from the template, upgrade keeping the edited env file,
a reboot (enabled on install), remove and purge. The .rpm is inspected and installed into a scratch root.
Figures go through `record()`; no timing is asserted beyond the unit's own timeouts.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CONNECTED,
    NO_DEVTOOLS_CHECK,
    NO_DEVTOOLS_EXPECTED,
    RELEASES,
    REPO,
    SUITE,
    Container,
    install_dev_controller,
    record,
    run,
    wait_listening,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

AGENT_ID = "5f0c0ffee0ddba11ab1e0001"
SECRET = "systest-secret-0123456789abcdef"
CONTROLLER_PORT = 3305
API_PORT = 8443
UNIT = "aiwm-agentd.service"
VENV = "/opt/aiwm-agentd"
CLAUDE = f"{VENV}/lib/python3.11/site-packages/claude_agent_sdk/_bundled/claude"
SERVICE_KEYS_NOT_FOR_ONESHOT = re.compile(
    r"^(Type|NotifyAccess|ExecStart|ExecReload|EnvironmentFile|Watchdog\w*|Restart\w*|Timeout\w*|KillMode)="
)

GOOD_ENV = f"""# written by tests/system
AIWM_ENABLED=true
AIWM_BASE_URL=http://127.0.0.1:{CONTROLLER_PORT}
AIWM_AGENT_ID={AGENT_ID}
AIWM_AGENT_SECRET={SECRET}
AIWM_HEARTBEAT_INTERVAL=1
LOG_LEVEL=DEBUG
"""

# Faster watchdog and restart for the test; every other setting is the shipped unit's.
TEST_DROPIN = "[Service]\nWatchdogSec=4s\nRestartSec=1s\n"


def usec(props: dict[str, str], key: str) -> int:
    return int(props[key])


def messages(entries: list[dict[str, Any]]) -> list[str]:
    return [e["MESSAGE"] for e in entries]


def cursor(box: Container, unit: str) -> str:
    entries = box.journal(unit)
    return entries[-1]["__CURSOR"] if entries else ""


def count(entries: list[dict[str, Any]], pattern: str) -> int:
    rx = re.compile(pattern, re.I)
    return sum(1 for e in entries if rx.search(e["MESSAGE"]))


def wait_active(box: Container, unit: str = UNIT, timeout: float = 30) -> None:
    box.wait_for(f"{unit} active", lambda: box.out(f"systemctl is-active {unit}", check=False) == "active",
                 timeout=timeout)


# ------------------------------------------------------------------------------------------------ tests


def test_units_static_checks() -> None:
    """Exposure <= 1.5 offline, `systemd-analyze verify` without complaints (see units-check.sh)."""
    out = run([str(REPO / "packaging/units-check.sh")]).stdout
    exposures = dict(re.findall(r"^(\S+): exposure ([0-9.]+)", out, re.M))
    assert set(exposures) == {"aiwm-agentd.service", "aiwm-agentd@check.service", "aiwm-agentd-tools.service",
                              "aiwm-agentd-tools@check.service"}, out
    for unit, value in exposures.items():
        assert float(value) <= 1.5, out
        record(f"exposure_offline[{unit}]", float(value))
    # The template carries exactly the same sandbox as the main unit.
    def hardening(name: str) -> str:
        text = (REPO / "systemd" / name).read_text()
        return text[text.index("# --- Hardening"):text.index("[Install]")]
    assert hardening("aiwm-agentd.service") == hardening("aiwm-agentd@.service")


def test_install(container: Container, packages: dict[str, Any]) -> None:
    box = container
    shutil.copy(packages["deb"], box.root / "root/aiwm-agentd.deb")
    started = time.monotonic()
    proc = box.sh("dpkg -i /root/aiwm-agentd.deb", timeout=300)
    record("deb_install_seconds", time.monotonic() - started)
    assert "not started" in proc.stderr + proc.stdout  # the example env file is not configured

    # The system user, the env file from the example (root:aiwm-agentd 0640), enabled but not started.
    assert box.out("getent passwd aiwm-agentd | cut -d: -f6,7") == "/var/lib/aiwm-agentd:/usr/sbin/nologin"
    assert int(box.out("id -u aiwm-agentd")) < 1000
    assert box.out("stat -c '%U:%G %a' /etc/aiwm/agent.env") == "root:aiwm-agentd 640"
    assert box.out("cmp /etc/aiwm/agent.env /etc/aiwm/agent.env.example && echo same") == "same"
    assert box.out("dpkg-query -W -f='${Conffiles}' aiwm-agentd").split()[0] == "/etc/aiwm/agent.env.example"
    assert box.out(f"systemctl is-enabled {UNIT}") == "enabled"
    assert box.out(f"systemctl is-active {UNIT}", check=False) == "inactive"
    assert box.out("ls /usr/share/doc/aiwm-agentd") == "README.md\nchangelog.Debian.gz\ncopyright"

    # Relocated venv: the packaged interpreter links, shebangs, no build-machine path anywhere.
    assert box.out(f"head -1 {VENV}/bin/aiwm-agentd") == f"#!{VENV}/bin/python"
    assert box.out(f"readlink {VENV}/bin/python3") == "/usr/bin/python3.11"
    assert f"command = /usr/bin/python3.11 -m venv {VENV}" in box.out(f"cat {VENV}/pyvenv.cfg")
    leaks = box.out(f"grep -rlaF -e '{REPO}' -e '{REPO}/build' {VENV} | head -5", check=False)
    assert leaks == "", f"build paths in: {leaks}"
    assert int(box.out(f"find {VENV} -name '*.pyc' | wc -l")) > 1000
    assert box.out(NO_DEVTOOLS_CHECK, check=False) == NO_DEVTOOLS_EXPECTED
    assert box.out("dpkg-query -W -f='${Version}' aiwm-agentd") == f"{packages['version']}-1{RELEASES[SUITE]}"
    assert box.out("runuser -u aiwm-agentd -- aiwm-agentd --version") == f"aiwm-agentd {packages['version']}"

    # verify (stderr and stdout must be empty) and the online exposure, with the binary now present.
    verify = box.sh("systemd-analyze verify aiwm-agentd.service aiwm-agentd@two.service 2>&1", check=False)
    assert verify.stdout.strip() == "" and verify.returncode == 0, verify.stdout
    security = box.out(f"systemd-analyze security {UNIT} | tail -1")
    exposure = float(re.search(r"level for \S+: ([0-9.]+)", security).group(1))  # type: ignore[union-attr]
    record("exposure_in_container", exposure)
    assert exposure <= 1.5


def test_claude_cli_runs_hardened_and_reaches_https(container: Container) -> None:
    """The bundled Claude Code CLI (a JIT JavaScript runtime) under exactly the unit's sandbox settings,
    as the service user, talking TLS (verified against a test CA) to a loopback Messages API."""
    box = container
    certs = box.root / "etc/aiwm-systest"
    certs.mkdir(parents=True, exist_ok=True)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(certs / "key.pem"),
         "-out", str(certs / "cert.pem"), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"])
    shutil.copy(REPO / "tests/system/fake_api.py", certs / "fake_api.py")
    for f in certs.iterdir():
        f.chmod(0o644)
    box.sh(f"systemd-run --unit=aiwm-fakeapi /usr/bin/python3 /etc/aiwm-systest/fake_api.py "
           f"/etc/aiwm-systest/cert.pem /etc/aiwm-systest/key.pem {API_PORT} /run/fakeapi.log")

    shipped = box.out(f"sed -n '/^\\[Service\\]/,/^\\[Install\\]/p' /lib/systemd/system/{UNIT}").splitlines()
    sandbox = [line for line in shipped
               if line and not line.startswith(("#", "[")) and not SERVICE_KEYS_NOT_FOR_ONESHOT.match(line)]
    assert "CapabilityBoundingSet=" in sandbox and "SystemCallFilter=@system-service" in sandbox
    unit = "\n".join([
        "[Service]", "Type=oneshot", *sandbox,
        f"Environment=ANTHROPIC_BASE_URL=https://127.0.0.1:{API_PORT} ANTHROPIC_API_KEY=sk-systest "
        "NODE_EXTRA_CA_CERTS=/etc/aiwm-systest/cert.pem CLAUDE_CODE_MAX_RETRIES=0 "
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
        f"ExecStart={CLAUDE} -p ping --max-turns 1 --model claude-haiku-4-5", "",
    ])
    box.write("/etc/systemd/system/aiwm-clicheck.service", unit)
    box.sh("systemctl daemon-reload")
    started = time.monotonic()
    box.sh("systemctl start aiwm-clicheck.service", check=False, timeout=120)
    record("claude_cli_hardened_turn_seconds", time.monotonic() - started)
    props = box.show("aiwm-clicheck.service", "Result", "ExecMainCode", "ExecMainStatus")
    output = messages(box.journal("aiwm-clicheck.service"))
    assert props["Result"] == "success", (props, output[-20:])
    assert "pong" in output, output[-20:]
    assert "POST /v1/messages" in box.out("cat /run/fakeapi.log")
    box.sh("systemctl stop aiwm-fakeapi.service; rm -f /etc/systemd/system/aiwm-clicheck.service; "
           "systemctl daemon-reload")


def test_start_connects_and_heartbeats(container: Container) -> None:
    box = container
    install_dev_controller(box, CONTROLLER_PORT, AGENT_ID, SECRET)
    box.write("/etc/aiwm/agent.env", GOOD_ENV, mode="0640", owner="root:aiwm-agentd")
    box.write(f"/etc/systemd/system/{UNIT}.d/10-systest.conf", TEST_DROPIN)
    box.sh("systemctl daemon-reload")

    box.sh(f"systemctl start {UNIT}", timeout=120)  # Type=notify: returns once READY=1 arrived
    assert box.out(f"systemctl is-active {UNIT}") == "active"
    props = box.show(UNIT, "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic", "MainPID",
                     "User", "WatchdogUSec")
    record("start_to_active_seconds",
           (usec(props, "ActiveEnterTimestampMonotonic") - usec(props, "ExecMainStartTimestampMonotonic")) / 1e6)
    assert box.out(f"ps -o user= -p {props['MainPID']}") == "aiwm-agentd"
    assert box.out("stat -c '%U %a' /var/lib/aiwm-agentd") == "aiwm-agentd 700"

    box.wait_for("two heartbeats", lambda: count(box.journal(UNIT), r"heartbeat") >= 2, timeout=30)
    entries = box.journal(UNIT)
    daemon = [e for e in entries if e.get("_PID") == props["MainPID"]]
    assert count(daemon, CONNECTED) >= 1, messages(daemon)
    priorities = {e.get("PRIORITY") for e in daemon}
    # The "<N>" prefixes reach journald as priorities: INFO (6) for connect, DEBUG (7) for heartbeats.
    assert {"6", "7"} <= priorities, priorities
    heartbeat = [e for e in daemon if re.search("heartbeat", e["MESSAGE"], re.I)]
    assert heartbeat and all(not e["MESSAGE"].startswith("<") for e in heartbeat)
    assert SECRET not in "\n".join(messages(entries))
    box.state["mainpid"] = props["MainPID"]


def test_reload_reconnects(container: Container) -> None:
    box = container
    mark = cursor(box, UNIT)
    box.sh(f"systemctl reload {UNIT}")
    box.wait_for("a reconnect after SIGHUP", lambda: count(
        box.journal(UNIT, mark), CONNECTED) >= 1, timeout=30)
    assert box.out(f"systemctl is-active {UNIT}") == "active"
    assert box.show(UNIT, "MainPID")["MainPID"] == box.state["mainpid"]  # same process, no restart


def test_watchdog_kills_a_frozen_daemon_and_restarts_it(container: Container) -> None:
    box = container
    before = box.show(UNIT, "MainPID", "NRestarts")
    mark = cursor(box, UNIT)
    frozen_at = time.monotonic()
    # `kill -STOP 0` would stop nsenter's process group, which is this test's own: never without a real pid.
    assert before["MainPID"].isdigit() and int(before["MainPID"]) > 1, f"the unit is not running: {before}"
    box.sh(f"kill -STOP {before['MainPID']}")
    box.wait_for("a new main process", lambda: (
        box.show(UNIT, "MainPID")["MainPID"] not in ("0", before["MainPID"])
        and box.out(f"systemctl is-active {UNIT}", check=False) == "active"), timeout=60)
    record("watchdog_freeze_to_active_again_seconds", time.monotonic() - frozen_at)
    after = box.show(UNIT, "NRestarts")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    log = messages(box.journal(UNIT, mark))
    assert any("Watchdog timeout" in m for m in log), log
    assert any("Failed with result 'watchdog'" in m for m in log), log
    box.wait_for("reconnected", lambda: count(box.journal(UNIT, mark), CONNECTED) >= 1)


def test_stop_is_clean_within_timeout(container: Container) -> None:
    box = container
    started = time.monotonic()
    box.sh(f"systemctl stop {UNIT}", timeout=60)
    wall = time.monotonic() - started
    props = box.show(UNIT, "Result", "ActiveState", "ActiveExitTimestampMonotonic",
                     "InactiveEnterTimestampMonotonic", "TimeoutStopUSec", "ExecMainCode", "ExecMainStatus")
    assert props["Result"] == "success", props
    assert props["ActiveState"] == "inactive"
    stop = (usec(props, "InactiveEnterTimestampMonotonic") - usec(props, "ActiveExitTimestampMonotonic")) / 1e6
    record("stop_seconds", stop)
    record("stop_seconds_wall", wall)
    assert props["TimeoutStopUSec"] == "20s" and stop < 20
    assert box.out("test -d /var/lib/aiwm-agentd && echo kept") == "kept"  # state survives a stop


def test_bad_value_fails_once_with_78_and_is_not_restarted(container: Container) -> None:
    box = container
    box.write("/etc/aiwm/agent.env", GOOD_ENV.replace("AIWM_HEARTBEAT_INTERVAL=1", "AIWM_HEARTBEAT_INTERVAL=soon"),
              mode="0640", owner="root:aiwm-agentd")
    mark = cursor(box, UNIT)
    assert box.sh(f"systemctl start {UNIT}", check=False, timeout=60).returncode != 0
    time.sleep(3)  # RestartSec is 1 s here: a restart would have happened by now
    props = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78", "NRestarts": "0"}, props
    log = messages(box.journal(UNIT, mark))
    assert any("AIWM_HEARTBEAT_INTERVAL" in m for m in log), log
    assert sum("Starting " in m for m in log) == 1, log
    box.write("/etc/aiwm/agent.env", GOOD_ENV, mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl reset-failed {UNIT} && systemctl start {UNIT}", timeout=60)


def test_template_instance_runs_beside_the_main_agent(container: Container) -> None:
    box = container
    box.write("/etc/aiwm/two.env", "AIWM_ENABLED=false\nLOG_LEVEL=DEBUG\n", mode="0640", owner="root:aiwm-agentd")
    box.sh("systemctl start aiwm-agentd@two.service", timeout=60)
    wait_active(box, "aiwm-agentd@two.service")
    assert box.out(f"systemctl is-active {UNIT}") == "active"
    assert box.out("stat -c '%U %a' /var/lib/aiwm-agentd-two") == "aiwm-agentd 700"
    pid = box.show("aiwm-agentd@two.service", "MainPID")["MainPID"]
    environ = box.out(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "STATE_DIRECTORY=/var/lib/aiwm-agentd-two" in environ and "AIWM_HEALTH_ADDR=off" in environ
    box.sh("systemctl stop aiwm-agentd@two.service")


def test_upgrade_keeps_the_edited_env_file(container: Container, newer_deb: Callable[[str], Path]) -> None:
    box = container
    edited = GOOD_ENV + "# edited by the operator\n"
    box.write("/etc/aiwm/agent.env", edited, mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl restart {UNIT}", timeout=60)
    pid_before = box.show(UNIT, "MainPID")["MainPID"]
    digest = hashlib.sha256(edited.encode()).hexdigest()

    shutil.copy(newer_deb(SUITE), box.root / "root/aiwm-agentd-2.deb")
    started = time.monotonic()
    proc = box.sh("dpkg -i /root/aiwm-agentd-2.deb", timeout=300)
    record("deb_upgrade_seconds", time.monotonic() - started)
    assert box.out("dpkg-query -W -f='${Version}' aiwm-agentd").endswith(f"-2{RELEASES[SUITE]}")
    assert box.out("sha256sum < /etc/aiwm/agent.env | cut -d' ' -f1") == digest
    assert box.out("stat -c '%U:%G %a' /etc/aiwm/agent.env") == "root:aiwm-agentd 640"
    assert box.out("ls /etc/aiwm") == "agent.env\nagent.env.example\ninstruction.md.example\ntwo.env", proc.stdout
    wait_active(box)
    assert box.show(UNIT, "MainPID")["MainPID"] != pid_before  # restarted on upgrade


def test_enabled_unit_comes_up_on_boot(container: Container) -> None:
    box = container
    box.poweroff()
    box.boot()
    wait_active(box, timeout=60)
    manager = box.out("systemctl show -p UserspaceTimestampMonotonic --value")
    active = box.show(UNIT, "ActiveEnterTimestampMonotonic")
    record("boot_to_active_seconds", (usec(active, "ActiveEnterTimestampMonotonic") - int(manager)) / 1e6)
    box.wait_for("connected after boot", lambda: count(box.journal(UNIT, ""), CONNECTED) >= 1)


def test_remove_then_purge(container: Container) -> None:
    box = container
    box.sh("systemctl start aiwm-agentd@two.service", timeout=60)
    box.sh("dpkg -r aiwm-agentd", timeout=120)
    for unit in (UNIT, "aiwm-agentd@two.service"):
        assert box.out(f"systemctl is-active {unit}", check=False) in ("inactive", "unknown")
    assert box.out("test -f /etc/aiwm/agent.env && id -u aiwm-agentd >/dev/null && test -d /var/lib/aiwm-agentd"
                   " && echo kept") == "kept"
    assert box.out(f"test -e {VENV} || echo gone") == "gone"

    box.sh("rm /etc/aiwm/two.env")  # the operator's own file; purge leaves unknown files alone
    started = time.monotonic()
    box.sh("dpkg --purge aiwm-agentd", timeout=120)
    record("deb_purge_seconds", time.monotonic() - started)
    gone = ("/etc/aiwm", "/var/lib/aiwm-agentd", "/var/lib/aiwm-agentd-two", "/usr/bin/aiwm-agentd",
            f"/lib/systemd/system/{UNIT}", f"/etc/systemd/system/multi-user.target.wants/{UNIT}")
    for path in gone:
        assert box.out(f"test -e {path} || test -L {path} || echo gone") == "gone", path
    assert box.sh("getent passwd aiwm-agentd", check=False).returncode == 2
    assert box.sh("getent group aiwm-agentd", check=False).returncode == 2
    assert box.out("dpkg-query -W -f='${Status}' aiwm-agentd 2>&1", check=False).startswith(
        ("dpkg-query: no packages", "unknown ok not-installed"))


def test_install_onto_a_provisioned_env_file_starts_at_once(container: Container, packages: dict[str, Any]) -> None:
    """cloud-init style: /etc/aiwm/agent.env written (root:root 0600) before the package is installed.
    The file is kept as it is (only its group becomes aiwm-agentd) and, being configured, the daemon starts."""
    box = container
    box.write("/etc/aiwm/agent.env", GOOD_ENV, mode="0600", owner="root:root")
    mark = cursor(box, UNIT)
    box.sh("dpkg -i /root/aiwm-agentd.deb", timeout=300)
    assert box.out("cat /etc/aiwm/agent.env") == GOOD_ENV.strip()
    assert box.out("stat -c '%U:%G %a' /etc/aiwm/agent.env") == "root:aiwm-agentd 640"
    wait_active(box)
    assert box.out("systemctl is-enabled aiwm-agentd") == "enabled"
    # A fresh dev controller (no memory of the purged agent's session), then have the agent reconnect.
    box.sh("systemctl restart aiwm-devctl.service")
    wait_listening(box, CONTROLLER_PORT)
    box.sh(f"systemctl reload {UNIT}")
    box.wait_for("connected", lambda: count(box.journal(UNIT, mark), CONNECTED) >= 1)
    box.sh("dpkg --purge aiwm-agentd", timeout=120)
    assert box.out("test -e /etc/aiwm/agent.env || echo gone") == "gone"


def test_rpm_inspect_and_install_into_a_root(packages: dict[str, Any]) -> None:
    rpm = str(packages["rpm"])
    info = run(["rpm", "-qip", rpm]).stdout
    assert re.search(r"^Name\s*:\s*aiwm-agentd", info, re.M), info
    files = run(["rpm", "-qlp", rpm]).stdout.splitlines()
    devtools = [f for f in files if re.search(r"aiwm_devtools|/bcrypt|aiwm_agentd/devcontroller\.py", f)]
    assert devtools == [], devtools[:5]
    for path in ("/usr/bin/aiwm-agentd", "/usr/lib/systemd/system/aiwm-agentd.service",
                 "/usr/lib/systemd/system/aiwm-agentd@.service", "/etc/aiwm/agent.env.example",
                 f"{VENV}/bin/aiwm-agentd"):
        assert path in files, path
    requires = run(["rpm", "-qp", "--requires", rpm]).stdout
    assert "python(abi) = 3.11" in requires and "/usr/bin/kill" in requires, requires
    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    for part in ("preinstall scriptlet", "postinstall scriptlet", "preuninstall scriptlet", "useradd"):
        assert part in scripts, part
    for script in sorted((REPO / "build/pkg/scripts").glob("*/*")):  # the scriptlets as packaged
        run(["sh", "-n", str(script)])
    configs = run(["rpm", "-qp", "--configfiles", rpm]).stdout.split()
    assert configs == ["/etc/aiwm/agent.env.example", "/etc/aiwm/instruction.md.example"], configs
    lint = run(["rpmlint", "-r", str(REPO / "packaging/rpmlintrc"), rpm], check=False, timeout=600)
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build/rpmlint.txt").write_text(lint.stdout + lint.stderr)
    summary = re.search(r"\d+ packages and \d+ specfiles checked.*", lint.stdout)
    record("rpmlint_summary", summary.group(0) if summary else lint.stdout[-200:])

    root = Path(tempfile.mkdtemp(prefix="aiwm-systest-rpmroot-", dir="/var/tmp"))
    try:
        run(["rpm", "--root", str(root), "--initdb"])
        started = time.monotonic()
        run(["rpm", "--root", str(root), "-i", "--nodeps", "--noscripts", rpm], timeout=300)
        record("rpm_install_seconds_noscripts", time.monotonic() - started)
        assert run(["rpm", "--root", str(root), "-q", "aiwm-agentd"]).stdout.startswith("aiwm-agentd-")
        venv = root / VENV.lstrip("/")
        version = run([str(venv / "bin/python3"), str(venv / "bin/aiwm-agentd"), "--version"]).stdout.strip()
        assert version == f"aiwm-agentd {packages['version']}"
        leaks = subprocess.run(["grep", "-rlaF", str(REPO), str(venv)], capture_output=True, text=True)
        assert leaks.stdout == "", leaks.stdout[:500]
    finally:
        shutil.rmtree(root, ignore_errors=True)
