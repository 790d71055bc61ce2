"""The daemon against a hostile controller: bounded start-up, calls that cannot stall the loop, guarded reloads."""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

import pytest

from tests.fakes.faulty_controller import FaultyController
from tests.harness import MakeDaemon, controller_env, wait_for


def connects(ctl: FaultyController) -> list[float]:
    return [r["time"] for r in ctl.requests if r["path"].endswith("/connect")]


def test_a_long_retry_after_at_boot_does_not_hold_ready_back(ctl: FaultyController, daemon: MakeDaemon,
                                                             tmp_path: Path) -> None:
    (tmp_path / "instruction.md").write_text("Local instruction while the controller throttles.\n")
    ctl.inject("POST", r"/connect$", 429, headers={"Retry-After": "300"}, times=None)
    d = daemon(controller_env(ctl, AIWM_INSTRUCTION_FILE=tmp_path / "instruction.md"), watchdog_usec=2_000_000)
    ready_after = d.wait_ready(20)
    assert ready_after <= 15
    health = d.health()
    assert health["state"] == "fallback" and health["config"]["source"] == "local"
    assert "429" in health["controller"]["last_error"]
    assert len(connects(ctl)) == 1  # the controller's Retry-After is respected, not hammered
    assert d.stop()[0] == 0


def test_a_hanging_controller_at_boot_does_not_hold_ready_back(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.inject("POST", r"/connect$", 503, delay=60, times=None)
    d = daemon(controller_env(ctl, AIWM_REQUEST_TIMEOUT="30"), watchdog_usec=1_000_000)
    ready_after = d.wait_ready(20)
    assert ready_after <= 15
    assert d.health()["state"] == "fallback"
    assert d.notify is not None
    pings = [at for at, text in d.notify.messages if text == "WATCHDOG=1\n"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 15 and max(gaps) < 0.8, gaps  # every 0.5 s while the connect hangs
    code, seconds = d.stop()
    assert code == 0 and seconds < 1.0


def test_hanging_heartbeats_never_starve_the_watchdog(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl, AIWM_REQUEST_TIMEOUT="1.5", AIWM_HEARTBEAT_INTERVAL="0.2"),
               watchdog_usec=600_000)
    d.wait_ready()
    wait_for(lambda: ctl.heartbeats, 5, what="a first heartbeat")
    ctl.inject("POST", r"/heartbeat$", None, delay=30, times=None)
    assert d.notify is not None
    mark = time.monotonic()
    wait_for(lambda: d.health()["heartbeat"]["failures_in_row"] >= 2, 10, what="two timed-out heartbeats")
    pings = [at for at, text in d.notify.messages if text == "WATCHDOG=1\n" and at >= mark]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.6, gaps  # WATCHDOG_USEC/2 = 0.3 s, with slack for a loaded machine
    failures = [line for line in d.metrics().splitlines()
                if line.startswith('aiwm_heartbeat_failure_total{reason="timeout"}')]
    assert failures and float(failures[0].split()[-1]) >= 2
    code, seconds = d.stop()
    assert code == 0 and seconds < 1.0


def test_a_deeply_nested_answer_is_refused_and_the_daemon_serves_on(ctl: FaultyController,
                                                                     daemon: MakeDaemon) -> None:
    nested = b'{"accessToken": "x", "settings": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    ctl.inject("POST", r"/connect$", 200, body=nested, times=None)
    d = daemon(controller_env(ctl, AIWM_CONNECT_RETRIES="1"))
    d.wait_ready(15)
    wait_for(lambda: "invalid_response" in d.health()["controller"]["last_error"], 10, what="invalid_response")
    assert d.health()["state"] == "fallback"
    assert "RecursionError" not in d.output()
    ctl.clear_faults()
    wait_for(lambda: d.health()["state"] == "connected", 10, what="recovery after the controller is fixed")
    assert d.stop()[0] == 0


def test_sighup_with_an_unreadable_instruction_file_is_refused_not_fatal(daemon: MakeDaemon,
                                                                          tmp_path: Path) -> None:
    instruction = tmp_path / "instruction.md"
    instruction.write_text("Local instruction.\n")
    d = daemon({"AIWM_ENABLED": "false", "AIWM_INSTRUCTION_FILE": instruction})
    d.wait_ready()
    instruction.write_bytes(b"\xff\xfe not utf-8 \xff")
    d.send(signal.SIGHUP)
    d.wait_for_log(r"reload refused.*AIWM_INSTRUCTION_FILE")
    time.sleep(0.3)
    assert d.proc.poll() is None
    assert d.health()["state"] == "fallback"
    assert d.notify is not None and d.notify.lines().count("READY=1") >= 2  # READY again after RELOADING
    assert d.stop()[0] == 0


def test_reload_with_a_wrong_secret_keeps_the_session_and_its_configuration(ctl: FaultyController,
                                                                             daemon: MakeDaemon) -> None:
    ctl.set_instruction("The controller's instruction.", [])
    ctl.set_settings({"claude_model": "claude-from-controller"})
    d = daemon(controller_env(ctl))
    d.wait_ready()
    wait_for(lambda: ctl.heartbeats, 5)
    d.update_env(AIWM_AGENT_SECRET="a-wrong-secret-from-a-typo")
    d.send(signal.SIGHUP)
    d.wait_for_log(r"SIGHUP failed .*Invalid credentials.*keeping the current token")
    count = len(ctl.heartbeats)
    wait_for(lambda: len(ctl.heartbeats) >= count + 3, 5, what="heartbeats with the still-valid token")
    health = d.health()
    assert health["state"] == "connected"
    assert health["config"]["source"] == "controller" and health["config"]["model"] == "claude-from-controller"
    assert any("Invalid credentials" in item for item in health["degraded"])
    assert "a-wrong-secret-from-a-typo" not in d.output()
    assert d.stop()[0] == 0


def test_a_configuration_error_reaches_the_journal_at_priority_err(tmp_path: Path) -> None:
    """Under journald (JOURNAL_STREAM names our stderr) the exit-78 line carries `<3>`: `journalctl -p err`
    shows why the unit failed."""
    import os
    import subprocess
    import sys

    from tests.harness import ROOT, write_env

    env_file = write_env(tmp_path / "agent.env", {"AIWM_ENABLED": "false", "AIWM_HEARTBEAT_INTERVAL": "soon"})
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIWM_", "NOTIFY_SOCKET"))}
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        code = subprocess.run([sys.executable, "-m", "aiwm_agentd", "run", "--env-file", str(env_file)],
                              stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT, timeout=30).returncode
    assert code == 78
    lines = err_path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("<3>aiwm-agentd: configuration error: AIWM_HEARTBEAT_INTERVAL")


def test_the_health_endpoint_serves_on_ipv6_loopback(daemon: MakeDaemon) -> None:
    import socket
    import urllib.request

    from tests.harness import free_port

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = free_port()
    d = daemon({"AIWM_ENABLED": "false", "AIWM_HEALTH_ADDR": f"[::1]:{port}"})
    d.wait_ready()
    d.wait_for_log(rf"health endpoint on http://\[::1\]:{port}/health")
    with urllib.request.urlopen(f"http://[::1]:{port}/health", timeout=5) as response:
        assert response.status == 200
    assert d.stop()[0] == 0
