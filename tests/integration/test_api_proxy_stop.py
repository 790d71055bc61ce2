"""Stopping the loopback API proxy while a request is held upstream (a turn in flight at shutdown or upgrade):
it ends promptly and quietly, with no traceback from aiohttp in the log (seen in the journal under systemd)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import requests

from aiwm_agentd.sandbox.api_proxy import ApiProxy, Upstream


def test_a_stop_with_a_request_in_flight_is_quiet_and_prompt(caplog: pytest.LogCaptureFixture) -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(4)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(upstream.accept()[0]), daemon=True).start()
    proxy = ApiProxy(Upstream(f"http://127.0.0.1:{upstream.getsockname()[1]}", "sk-ant-real", ""))
    proxy.start()
    token = proxy.issue("test")
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(requests.post(f"{proxy.url}/v1/messages", json={}, headers={"x-api-key": token},
                                         timeout=30).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=ask)
    with caplog.at_level(logging.DEBUG):
        caller.start()
        deadline = time.monotonic() + 5
        while not held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held, "the request never reached the upstream"
        started = time.monotonic()
        proxy.stop(time.monotonic() + 10)
        stop_seconds = time.monotonic() - started
        caller.join(10)
    upstream.close()
    for conn in held:
        conn.close()
    assert stop_seconds < 3, stop_seconds
    assert outcome, "the caller never got an answer"
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, [(r.name, r.getMessage()) for r in noisy]
