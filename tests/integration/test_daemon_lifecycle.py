"""The daemon as a subprocess against the dev controller (with faults): the whole AIWM lifecycle."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.faulty_controller import FaultyController
from tests.harness import ROOT, MakeDaemon, assert_no_secrets, controller_env, wait_for


def test_notify_protocol_ready_watchdog_status_stopping(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl, AGENT_NAME="Agent Ünïcødé"), watchdog_usec=400_000)
    ready_after = d.wait_ready()
    assert ready_after < 5
    assert d.notify is not None
    wait_for(lambda: d.notify.lines().count("WATCHDOG=1") >= 3, 3, what="3 watchdog pings")
    # The watchdog ping always travels alone, so a bad status line can never take it down with it.
    assert all(text == "WATCHDOG=1\n" for _, text in d.notify.messages if "WATCHDOG" in text)
    pings = [at for at, text in d.notify.messages if text == "WATCHDOG=1\n"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.5, gaps  # half of WATCHDOG_USEC (0.2 s), with slack for a loaded machine
    statuses = [line for line in d.notify.lines() if line.startswith("STATUS=")]
    assert any("connected to AIWM (v5)" in s for s in statuses), statuses
    code, seconds = d.stop()
    assert code == 0
    assert seconds < 2
    assert "STOPPING=1" in d.notify.lines()
    assert ctl.disconnects == ["shutdown"]


def test_heartbeats_arrive_on_schedule_with_metrics(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl, AIWM_HEARTBEAT_INTERVAL="0.25"))
    d.wait_ready()
    wait_for(lambda: len(ctl.heartbeats) >= 6, 5, what="6 heartbeats")
    beats = ctl.heartbeats
    times = [b["time"] for b in beats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Jitter stays inside the interval: never later than it (plus scheduling slack), never much earlier.
    assert all(0.2 <= g <= 0.45 for g in gaps[1:]), gaps
    first = beats[0]
    assert first["status"] == "idle"
    for key in ("cpu", "memory", "uptime", "activeConnections", "daemonRssMiB"):
        assert key in first["metrics"], first["metrics"]
    health = d.health()
    assert health["healthy"] is True and health["state"] == "connected"
    assert health["heartbeat"]["age_s"] is not None and health["heartbeat"]["age_s"] < 2
    metrics = d.metrics()
    assert "aiwm_heartbeat_success_total" in metrics
    assert "aiwm_connection_success_total 1.0" in metrics
    assert d.stop()[0] == 0


def test_controller_down_at_boot_falls_back_then_recovers(ctl: FaultyController, daemon: MakeDaemon,
                                                          tmp_path: Path) -> None:
    (tmp_path / "instruction.md").write_text("Local instruction for fallback.\n")
    ctl.go_down()
    d = daemon(controller_env(ctl, AIWM_CONNECT_RETRIES="2", AIWM_FALLBACK_RETRY_INTERVAL="1",
                              AIWM_INSTRUCTION_FILE=tmp_path / "instruction.md"))
    d.wait_ready(15)
    health = d.health()
    assert health["state"] == "fallback"
    assert health["config"]["source"] == "local"
    assert health["healthy"] is True and health["degraded"]
    ctl.come_up()
    wait_for(lambda: d.health()["state"] == "connected", 10, what="reconnect after the controller came up")
    wait_for(lambda: ctl.heartbeats, 5, what="a heartbeat")
    assert d.health()["config"]["source"] == "controller"
    out = d.output()
    # The reason is logged once per distinct failure, not on every attempt.
    assert out.count("cannot connect to the controller") == 1, out
    assert d.stop()[0] == 0


def test_heartbeat_401_reconnects_at_once(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl))
    d.wait_ready()
    wait_for(lambda: len(ctl.heartbeats) >= 2, 5)
    ctl.revoke_tokens()
    wait_for(lambda: ctl.connects >= 2, 5, what="a reconnect after 401")
    count = len(ctl.heartbeats)
    wait_for(lambda: len(ctl.heartbeats) > count + 1, 5, what="heartbeats with the new token")
    health = d.health()
    assert health["token"]["refreshes"] >= 1
    assert health["state"] == "connected"
    assert "reconnecting now" in d.output()
    assert d.stop()[0] == 0


def test_token_refused_while_controller_goes_down_serves_on_then_recovers(ctl: FaultyController,
                                                                           daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl, AIWM_CONNECT_RETRIES="1"))
    d.wait_ready()
    wait_for(lambda: ctl.heartbeats, 5)
    ctl.revoke_tokens()
    ctl.inject("POST", r"/connect$", 503, times=None)
    wait_for(lambda: d.health()["state"] == "disconnected", 5, what="state disconnected after 401")
    health = d.health()
    assert health["config"]["source"] == "controller"  # still serving the last controller configuration
    assert "token refused" in health["controller"]["last_error"] or "503" in health["controller"]["last_error"]
    ctl.clear_faults()
    wait_for(lambda: d.health()["state"] == "connected", 10, what="recovery")
    count = len(ctl.heartbeats)
    wait_for(lambda: len(ctl.heartbeats) > count, 5, what="heartbeats again")
    assert d.stop()[0] == 0


def test_agent_deleted_stops_heartbeats_but_keeps_running(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl))
    d.wait_ready()
    wait_for(lambda: len(ctl.heartbeats) >= 1, 5)
    ctl.delete()
    wait_for(lambda: d.health()["state"] == "deleted", 5, what="state deleted")
    requests_then = len(ctl.requests)
    time.sleep(1.0)  # three heartbeat intervals
    assert len(ctl.requests) == requests_then, "no more controller calls after a 404"
    assert d.proc.poll() is None
    health = d.health()
    assert health["healthy"] is False
    assert "404" in health["problems"][0]
    status = subprocess.run([sys.executable, "-m", "aiwm_agentd", "status", "--addr",
                             f"127.0.0.1:{d.health_port}"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert status.returncode == 1
    assert "UNHEALTHY" in status.stdout
    assert "CRITICAL" in d.output()
    assert d.stop()[0] == 0


def test_sighup_reloads_env_and_reconnects(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon(controller_env(ctl, CLAUDE_MODEL="claude-env-one"))
    d.wait_ready()
    assert d.health()["config"]["model"] == "claude-env-one"
    updates = d.health()["config"]["updates"]
    connects = ctl.connects
    d.update_env(CLAUDE_MODEL="claude-env-two")
    d.send(signal.SIGHUP)
    wait_for(lambda: d.health()["config"]["model"] == "claude-env-two", 5, what="new model after SIGHUP")
    wait_for(lambda: ctl.connects == connects + 1, 5, what="the reconnect of the reload")
    d.wait_for_log(r"changed: claude\.model: claude-env-one -> claude-env-two")
    assert d.health()["config"]["updates"] == updates + 1  # one reload, one change counted once
    assert d.notify is not None and "RELOADING=1" in d.notify.lines()
    # A bad value on reload is refused; the daemon keeps the running configuration.
    d.update_env(AIWM_HEARTBEAT_INTERVAL="soon")
    d.send(signal.SIGHUP)
    d.wait_for_log(r"reload refused.*AIWM_HEARTBEAT_INTERVAL")
    # So is a bad agent setting, even one the controller currently overrides.
    d.update_env(AIWM_HEARTBEAT_INTERVAL="0.3", CLAUDE_MAX_TURNS="many")
    d.send(signal.SIGHUP)
    d.wait_for_log(r"reload refused.*CLAUDE_MAX_TURNS")
    assert d.proc.poll() is None
    assert d.health()["config"]["model"] == "claude-env-two"
    assert d.stop()[0] == 0


def test_sigterm_during_connect_backoff_exits_at_once(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.go_down()
    d = daemon(controller_env(ctl, AIWM_CONNECT_RETRIES="10"))
    d.wait_for_log(r"retry 1/10")  # now sleeping ~1 s before the next attempt
    time.sleep(0.2)
    code, seconds = d.stop()
    assert code == 0
    assert seconds < 1.0


def test_sigterm_during_hanging_request_exits_at_once(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.inject("POST", r"/connect$", 503, delay=30, times=5)
    d = daemon(controller_env(ctl, AIWM_REQUEST_TIMEOUT="20"))
    d.wait_for_log(r"health endpoint on")  # logged just before the first connect, which now hangs
    time.sleep(0.3)
    assert d.health()["state"] == "connecting"
    code, seconds = d.stop()
    assert code == 0
    assert seconds < 1.0


def test_second_signal_forces_exit(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.inject("POST", r"/disconnect$", None, delay=30)  # the graceful stop now waits its 2 s budget
    d = daemon(controller_env(ctl))
    d.wait_ready()
    started = time.monotonic()
    d.send(signal.SIGTERM)
    d.wait_for_log(r"stopping \(signal\)")
    d.send(signal.SIGTERM)
    assert d.proc.wait(5) == 130
    assert time.monotonic() - started < 1.5
    assert "second signal, exiting now" in d.output()


def test_invalid_credentials_are_not_retried_in_a_tight_loop(ctl: FaultyController, daemon: MakeDaemon) -> None:
    env = controller_env(ctl, AIWM_FALLBACK_RETRY_INTERVAL="30")
    env["AIWM_AGENT_SECRET"] = "wrong-secret-value-123"
    d = daemon(env)
    d.wait_ready()
    time.sleep(1.0)
    connect_calls = [r for r in ctl.requests if r["path"].endswith("/connect")]
    assert len(connect_calls) == 1
    assert d.health()["state"] == "fallback"
    out = d.output()
    assert "Invalid credentials" in out and "AIWM_AGENT_SECRET" in out
    assert_no_secrets(out, "wrong-secret-value-123", ctl.secret)
    assert d.stop()[0] == 0


def test_suspended_agent_backs_off_long(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.suspend()
    d = daemon(controller_env(ctl, AIWM_FALLBACK_RETRY_INTERVAL="30"))
    d.wait_ready()
    time.sleep(0.8)
    assert len([r for r in ctl.requests if r["path"].endswith("/connect")]) == 1
    assert "suspended" in d.health()["controller"]["last_error"]
    assert d.stop()[0] == 0


def test_retry_after_is_honoured(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.inject("POST", r"/connect$", 503, headers={"Retry-After": "2"})
    d = daemon(controller_env(ctl))
    d.wait_ready(10)
    connects = [r["time"] for r in ctl.requests if r["path"].endswith("/connect")]
    assert len(connects) == 2
    assert connects[1] - connects[0] >= 1.9


def test_heartbeat_status_enum_falls_back_and_remembers(ctl: FaultyController, daemon: MakeDaemon) -> None:
    ctl.inject("POST", r"/heartbeat$", 400,
               body={"statusCode": 400, "message": "Validation failed",
                     "errors": ["status must be one of the following values: online, busy"]})
    ctl.set_version("v4")  # v1-v4 accept online (v5 would reject it and flip the daemon back)
    d = daemon(controller_env(ctl))
    d.wait_ready()
    wait_for(lambda: len(ctl.heartbeats) >= 3, 5)
    assert {b["status"] for b in ctl.heartbeats} == {"online"}
    assert d.health()["heartbeat"]["status_enum"] == "online"
    assert d.stop()[0] == 0


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4", "v5"])
def test_every_wire_version_connects_and_heartbeats(version: str, ctl: FaultyController,
                                                    daemon: MakeDaemon) -> None:
    ctl.set_version(version)
    ctl.set_instruction("Be brief.", ["Be polite", "Be accurate"])
    d = daemon(controller_env(ctl))
    d.wait_ready()
    wait_for(lambda: len(ctl.heartbeats) >= 2, 5)
    health = d.health()
    assert health["controller"]["version"] == version
    assert health["state"] == "connected"
    assert d.stop()[0] == 0


def test_token_refreshed_before_expiry_and_config_change_applied(tmp_path: Path, daemon: MakeDaemon) -> None:
    with FaultyController(version="v5", bcrypt_rounds=4, token_ttl=3) as ctl:
        d = daemon(controller_env(ctl))
        d.wait_ready()
        ctl.set_instruction("A new instruction from the admin.", [])
        wait_for(lambda: d.health()["token"]["refreshes"] >= 1, 6, what="a token refresh before expiry")
        d.wait_for_log(r"changed: instruction")
        assert d.health()["config"]["updates"] >= 1
        refreshes = [line for line in d.metrics().splitlines() if line.startswith("aiwm_token_refresh_total ")]
        assert float(refreshes[0].split()[1]) >= 1
        # No heartbeat ever got a 401: the token was replaced before it expired.
        assert not [r for r in ctl.requests if r["path"].endswith("/heartbeat") and r["status"] == 401]
        assert d.stop()[0] == 0


def test_local_mode_makes_no_controller_calls(ctl: FaultyController, daemon: MakeDaemon) -> None:
    d = daemon({"AIWM_ENABLED": "false", "AGENT_NAME": "Local"})
    d.wait_ready()
    health = d.health()
    assert health["state"] == "fallback"
    assert health["config"]["source"] == "local"
    assert ctl.requests == []
    assert d.stop()[0] == 0


def test_config_error_exits_78_with_one_clear_line(tmp_path: Path, daemon: MakeDaemon) -> None:
    d = daemon({"AIWM_ENABLED": "true", "AIWM_BASE_URL": "http://127.0.0.1:1", "AIWM_AGENT_ID": "not-an-id",
                "AIWM_AGENT_SECRET": "s3cret-value-xyz"})
    assert d.proc.wait(30) == 78
    out = d.output().strip()
    assert len(out.splitlines()) == 1, out
    assert "AIWM_AGENT_ID" in out and "24 hexadecimal" in out
    assert "Traceback" not in out


def test_no_secret_or_token_in_output_even_at_debug(ctl: FaultyController, daemon: MakeDaemon) -> None:
    env = controller_env(ctl, LOG_LEVEL="DEBUG", CLAUDE_CODE_OAUTH_TOKEN="oauth-token-abcdef123456",
                         ANTHROPIC_API_KEY="sk-ant-test-key-987654321")
    d = daemon(env)
    d.wait_ready()
    wait_for(lambda: len(ctl.heartbeats) >= 2, 5)
    ctl.revoke_tokens()  # 401 -> reconnect: more token traffic
    wait_for(lambda: ctl.connects >= 2, 5)
    d.send(signal.SIGHUP)
    wait_for(lambda: ctl.connects >= 3, 5)
    health_text = str(d.health()) + d.metrics()
    assert d.stop()[0] == 0
    out = d.output()
    assert "DEBUG" in out  # the debug paths really ran
    for text in (out, health_text):
        assert_no_secrets(text, ctl.secret, "oauth-token-abcdef123456", "sk-ant-test-key-987654321")
