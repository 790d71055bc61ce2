"""A change made on the controller reaches a running daemon without an operator: the configuration poll."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.faulty_controller import FaultyController
from tests.harness import Daemon, assert_no_secrets, controller_env, wait_for


def test_an_instruction_changed_on_the_controller_is_applied_by_the_poll(tmp_path: Path) -> None:
    with FaultyController(version="v5", bcrypt_rounds=4) as ctl:
        ctl.set_instruction("The first instruction.", [])
        d = Daemon(tmp_path, controller_env(ctl, AIWM_CONFIG_POLL_INTERVAL="0.5", AIWM_HEARTBEAT_INTERVAL="5"))
        try:
            d.wait_ready()
            wait_for(lambda: any(r["path"].endswith("/config") for r in ctl.requests), 5, what="a first poll")
            connects = ctl.connects
            ctl.set_instruction("The second instruction.", [])
            d.wait_for_log(r"config poll: configuration applied; changed: .*instruction", 5)
            assert ctl.connects == connects  # no reconnect needed
            polls = [r for r in ctl.requests if r["path"].endswith("/config")]
            assert all(r["status"] == 200 for r in polls), polls
            code, _ = d.stop()
            assert code == 0
            assert_no_secrets(d.output(), ctl.secret)
        finally:
            d.close()
