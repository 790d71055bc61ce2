"""HTTP client for the AIWM controller: one method per endpoint, every failure classified.

Synchronous `requests`, run off the main thread (`controller/calls.py`). Every call has one overall deadline
(connect, headers and body together; `abort()` cuts a call that outlives it), carries a fresh
`x-correlation-id`, which is logged and attached to any `ControllerError`, and ignores the process
environment: no `.netrc` in the daemon's HOME replaces our Authorization header, no stray
`REQUESTS_CA_BUNDLE` changes TLS trust; proxies are passed explicitly (`proxies_from_env`).

`requests` (with urllib3, charset_normalizer, idna: ~7 MiB of RSS) is imported with the first call's session,
not with this module: a daemon in local mode builds a client but never calls the controller.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiwm_agentd import __version__
from aiwm_agentd.backoff import parse_retry_after
from aiwm_agentd.controller.wire import ControllerConfig, WireError, parse_connect_response

if TYPE_CHECKING:
    import requests

    from aiwm_agentd.controller.abortable import AbortableAdapter

log = logging.getLogger("aiwm_agentd.controller")

MAX_RESPONSE_BYTES = 1024 * 1024

FailureKind = Literal[
    "invalid_credentials",  # wrong secret: permanent until the secret changes
    "no_secret",  # the agent has no secret configured on the controller
    "suspended",  # the agent is suspended: back off long
    "not_found",  # unknown or deleted agent
    "unauthorized",  # heartbeat/config: token missing, bad or expired -> reconnect
    "rejected",  # 400: the controller refused a field (heartbeat status enum, validation)
    "rate_limited",  # 429
    "server_error",  # 5xx
    "network",  # connection refused, DNS, TLS, reset
    "timeout",
    "invalid_response",  # non-JSON, wrong types, too big
]

# Failures that repeating soon cannot fix: no tight retry loop.
PERMANENT_KINDS: frozenset[str] = frozenset(
    {"invalid_credentials", "no_secret", "suspended", "not_found", "rejected"}
)


class ControllerError(Exception):
    def __init__(
        self,
        kind: FailureKind,
        message: str,
        status: int | None = None,
        correlation_id: str = "",
        retry_after: float | None = None,
        errors: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.message = message
        self.status = status
        self.correlation_id = correlation_id
        self.retry_after = retry_after
        self.errors = errors
        super().__init__(self.describe())

    @property
    def permanent(self) -> bool:
        return self.kind in PERMANENT_KINDS

    @property
    def signature(self) -> str:
        """Identity of the failure for 'log once per distinct failure'."""
        return f"{self.kind}:{self.status}:{self.message}"

    def mentions(self, word: str) -> bool:
        """Whether the controller's message or validation errors name `word` (e.g. a rejected field)."""
        return word.lower() in (self.message + " " + " ".join(self.errors)).lower()

    def describe(self) -> str:
        status = f"HTTP {self.status} " if self.status else ""
        extra = f" ({'; '.join(self.errors)})" if self.errors else ""
        return f"{status}{self.kind}: {self.message}{extra}"


@dataclass(frozen=True)
class HeartbeatResult:
    body: Mapping[str, Any]
    correlation_id: str

    @property
    def notices(self) -> dict[str, Any]:
        """v5: an idle heartbeat's answer may carry work/systemMessage/systemTask."""
        return {k: self.body[k] for k in ("work", "systemMessage", "systemTask") if self.body.get(k)}


def _classify(status: int, message: str, path_kind: str) -> FailureKind:
    lowered = message.lower()
    if status == 401:
        if path_kind == "connect":
            if "suspended" in lowered:
                return "suspended"
            if "no secret" in lowered:
                return "no_secret"
            return "invalid_credentials"
        return "unauthorized"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    if status == 400 and "suspended" in lowered:
        return "suspended"
    return "rejected"


def proxies_from_env(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """(proxies, no_proxy) from the usual variables in the daemon's environment or env file."""
    def first(*names: str) -> str:
        return next((env[n].strip() for n in names if env.get(n, "").strip()), "")

    proxies = {scheme: url for scheme, url in (("http", first("HTTP_PROXY", "http_proxy")),
                                               ("https", first("HTTPS_PROXY", "https_proxy"))) if url}
    return proxies, first("NO_PROXY", "no_proxy")


def _parse_config(body: Any, cid: str) -> ControllerConfig:
    try:
        config = parse_connect_response(body)
        config.fingerprint()  # a structure too deep or odd to serialise is caught here, not later
    except (WireError, RecursionError, TypeError, ValueError) as exc:
        message = str(exc) if isinstance(exc, WireError) else "the response is nested too deeply or malformed"
        raise ControllerError("invalid_response", message, correlation_id=cid) from None
    return config


class ControllerClient:
    def __init__(
        self,
        base_url: str,
        agent_id: str,
        secret: str,
        timeout: float = 10.0,
        verify: bool | str = True,
        session: requests.Session | None = None,
        proxies: Mapping[str, str] | None = None,
        no_proxy: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self._secret = secret
        self.timeout = timeout
        self.verify = verify
        self._given_session = session
        self._session: requests.Session | None = None
        self._adapter: AbortableAdapter | None = None
        self._session_lock = threading.Lock()
        self._proxies = dict(proxies or {})
        self._no_proxy = no_proxy

    @property
    def session(self) -> requests.Session:
        """The HTTP session, built (and `requests` imported) on first use."""
        with self._session_lock:
            if self._session is None:
                import requests

                from aiwm_agentd.controller.abortable import AbortableAdapter

                session = self._given_session or requests.Session()
                session.trust_env = False
                self._adapter = AbortableAdapter()
                session.mount("http://", self._adapter)
                session.mount("https://", self._adapter)
                session.headers["User-Agent"] = f"aiwm-agentd/{__version__}"
                if self._proxies and requests.utils.should_bypass_proxies(self.base_url,
                                                                          no_proxy=self._no_proxy or None):
                    self._proxies = {}
                self._session = session
            return self._session

    def close(self) -> None:
        with self._session_lock:
            session = self._session if self._session is not None else self._given_session
        if session is not None:
            session.close()

    def abort(self) -> None:
        """Cut whatever call is in flight (from another thread): it ends at once with a network error."""
        adapter = self._adapter
        if adapter is not None:  # no session yet: nothing is in flight
            adapter.abort()

    # -- endpoints: `deadline` is a time.monotonic() by which the whole call must be over ----------

    def connect(self, deadline: float | None = None) -> ControllerConfig:
        body, cid = self._call("POST", f"/agents/{self.agent_id}/connect", "connect", json_body={
            "secret": self._secret,
        }, deadline=deadline)
        config = _parse_config(body, cid)
        if not config.token:
            raise ControllerError("invalid_response", "no token or accessToken in the response",
                                  correlation_id=cid)
        return config

    def heartbeat(self, token: str, status: str, metrics: Mapping[str, Any],
                  deadline: float | None = None, extra: Mapping[str, Any] | None = None) -> HeartbeatResult:
        """`extra`: v5+ top-level fields (`mcpConnected`, `availableFunctions`); older controllers may
        reject unknown fields, so the caller sends them only to controllers that know them."""
        body, cid = self._call(
            "POST", f"/agents/{self.agent_id}/heartbeat", "heartbeat", token=token,
            json_body={**dict(extra or {}), "status": status, "metrics": dict(metrics)}, deadline=deadline,
        )
        return HeartbeatResult(body if isinstance(body, Mapping) else {}, cid)

    def fetch_config(self, token: str, deadline: float | None = None) -> ControllerConfig:
        body, cid = self._call("GET", f"/agents/{self.agent_id}/config", "config", token=token,
                               deadline=deadline)
        return _parse_config(body, cid)

    def disconnect(self, token: str, reason: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        self._call("POST", f"/agents/{self.agent_id}/disconnect", "disconnect", token=token,
                   json_body={"reason": reason}, deadline=deadline)

    # -- plumbing -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        kind: str,
        token: str = "",
        json_body: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> tuple[Any, str]:
        cid = str(uuid.uuid4())
        headers = {"x-correlation-id": cid, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.base_url + path
        started = time.monotonic()
        deadline = started + self.timeout if deadline is None else deadline
        budget = deadline - started
        if budget <= 0:
            raise ControllerError("timeout", "no time left for the call", correlation_id=cid)
        session = self.session
        import requests  # loaded by the session above; a name lookup from here on

        try:
            response = session.request(
                method, url, json=json_body, headers=headers, timeout=(budget, budget),
                verify=self.verify, stream=True, allow_redirects=False, proxies=self._proxies,
            )
        except requests.Timeout:
            raise ControllerError("timeout", f"no answer within {budget:.3g} s", correlation_id=cid) from None
        except requests.exceptions.SSLError as exc:
            raise ControllerError("network", f"TLS verification failed: {_reason(exc)}",
                                  correlation_id=cid) from None
        except requests.RequestException as exc:
            raise ControllerError("network", _reason(exc), correlation_id=cid) from None
        try:
            raw = self._read_capped(response, cid, deadline)
        finally:
            response.close()
        cid = response.headers.get("x-correlation-id") or cid
        log.debug("%s %s -> %s (correlation id %s)", method, path, response.status_code, cid)
        body = self._decode(raw, response.status_code, cid)
        if 200 <= response.status_code < 300:
            return body, cid
        message, errors = _error_message(body, response, self._secret)
        raise ControllerError(
            _classify(response.status_code, message, kind), message, status=response.status_code,
            correlation_id=cid, retry_after=parse_retry_after(response.headers.get("Retry-After")),
            errors=errors,
        )

    def _read_capped(self, response: requests.Response, cid: str, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise ControllerError("invalid_response", f"response of {declared} bytes exceeds the "
                                  f"{MAX_RESPONSE_BYTES} byte cap", status=response.status_code,
                                  correlation_id=cid)
        import requests  # already loaded: the response came from it

        chunks: list[bytes] = []
        size = 0
        # requests' timeout bounds each socket read, not the whole body: a server dripping bytes would
        # otherwise hold the call far past its deadline.
        try:
            for chunk in response.iter_content(65536):
                if time.monotonic() > deadline:
                    raise ControllerError("timeout", "the response body took too long", correlation_id=cid)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ControllerError("invalid_response", f"response exceeds the {MAX_RESPONSE_BYTES} "
                                          "byte cap", status=response.status_code, correlation_id=cid)
                chunks.append(chunk)
        except requests.Timeout:
            raise ControllerError("timeout", "the response body stalled", correlation_id=cid) from None
        except requests.RequestException as exc:
            raise ControllerError("network", _reason(exc), correlation_id=cid) from None
        return b"".join(chunks)

    @staticmethod
    def _decode(raw: bytes, status: int, cid: str) -> Any:
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            if 200 <= status < 300:
                what = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
                raise ControllerError("invalid_response", f"the response is {what}", status=status,
                                      correlation_id=cid) from None
            return {}


def _error_message(body: Any, response: requests.Response, secret: str = "") -> tuple[str, tuple[str, ...]]:
    message = ""
    errors: tuple[str, ...] = ()
    if isinstance(body, Mapping):
        raw = body.get("message") or body.get("error") or ""
        if isinstance(raw, list):  # NestJS sometimes sends the validation list as `message`
            errors = tuple(str(e) for e in raw)
            raw = "Validation failed"
        message = str(raw)
        if isinstance(body.get("errors"), list):
            errors = tuple(str(e) for e in body["errors"])
    if secret:  # a controller or proxy echoing the request must not carry the secret into logs
        message = message.replace(secret, "***")
        errors = tuple(e.replace(secret, "***") for e in errors)
    return (message or response.reason or f"HTTP {response.status_code}")[:300], errors


def _reason(exc: Exception) -> str:
    """A short reason for a requests failure, without the URL noise (the URL has no secret anyway)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "Connection reset", "certificate verify failed", "No route to host", "Network is unreachable"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else type(exc).__name__
