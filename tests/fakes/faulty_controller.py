"""A fault-injecting DevController for integration tests.

    with FaultyController(version="v5", bcrypt_rounds=4) as ctl:
        ctl.inject("POST", r"/connect$", 503, headers={"Retry-After": "1"})   # once
        ctl.inject("POST", r"/heartbeat$", 401, times=2)                      # a 401 twice
        ctl.inject("POST", r"/connect$", 504, delay=30)                       # hang past the client timeout
        ctl.inject("POST", r"/heartbeat$", None, delay=2)                     # slow, then the real answer
        ctl.inject("GET", r"/config$", 502, body="<html>Bad gateway</html>")   # non-JSON body
        ctl.inject("POST", r"/connect$", 200, body=b"x" * (8 << 20))          # oversized body
        ctl.go_down()    # connections refused (hanging requests are dropped without an answer)
        ctl.come_up()    # listening again on the SAME port, state kept

Everything else (url, agent_id, secret, suspend(), heartbeats, ...) is delegated to the DevController,
which is also available as `ctl.controller`. Faults are matched in the order they were injected;
`path_regex` is searched (`re.search`) in the request path without the query string.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiwm_devtools.devcontroller import DevController, InjectedResponse


@dataclass
class Fault:
    method: str  # "*" = any
    pattern: re.Pattern[str]
    status: int | None  # None = only the delay, then the real handler answers
    body: Any
    times: int | None  # None = forever
    delay: float
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class FaultyController:
    def __init__(self, controller: DevController | None = None, **kwargs: Any) -> None:
        if controller is not None and kwargs:
            raise TypeError("pass either a DevController or DevController keyword arguments")
        self.controller = controller if controller is not None else DevController(**kwargs)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.controller.fault_hook = self._hook

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> FaultyController:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def go_down(self) -> None:
        """Stop listening: new connections are refused until `come_up()`."""
        self.controller.stop()

    def come_up(self) -> None:
        """Listen again on the same port (the port must still be free)."""
        self.controller.start()

    def __enter__(self) -> FaultyController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the wrapper itself.
        return getattr(self.__dict__["controller"], name)

    # ---------------------------------------------------------------------------------------- faults

    def inject(
        self,
        method: str,
        path_regex: str,
        status: int | None,
        body: Any = None,
        times: int | None = 1,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer the next `times` matching requests with `status` after `delay` seconds.

        body: None = the controller's own error body for `status` (current wire version's shape);
        dict/list = JSON; str = text as is (text/plain unless `headers` say otherwise); bytes = raw.
        """
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None (forever)")
        fault = Fault(
            method=method.upper(),
            pattern=re.compile(path_regex),
            status=status,
            body=body,
            times=times,
            delay=delay,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if not f.exhausted]

    def _hook(self, method: str, path: str, correlation_id: str) -> InjectedResponse | None:
        with self._lock:
            fault = next(
                (f for f in self._faults if not f.exhausted and f.method in ("*", method) and f.pattern.search(path)),
                None,
            )
            if fault is None:
                return None
            fault.hits += 1
        headers = dict(fault.headers)
        lowered = {k.lower() for k in headers}
        body: bytes = b""
        if fault.status is not None:
            if fault.body is None:
                payload = self.controller.error_body(fault.status, _phrase(fault.status), path, correlation_id, None)
                body = json.dumps(payload).encode()
            elif isinstance(fault.body, bytes):
                body = fault.body
                if "content-type" not in lowered:
                    headers["Content-Type"] = "application/octet-stream"
            elif isinstance(fault.body, str):
                body = fault.body.encode()
                if "content-type" not in lowered:
                    headers["Content-Type"] = "text/plain; charset=utf-8"
            else:
                body = json.dumps(fault.body).encode()
        return InjectedResponse(status=fault.status, body=body, headers=headers, delay=fault.delay)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
