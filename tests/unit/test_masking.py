"""A registered secret is masked in its encoded forms too, and URL passwords always: greps for the real values."""

from __future__ import annotations

import base64
import io
import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from aiwm_agentd import logs
from aiwm_agentd.config.table import SETTINGS, show_value
from aiwm_agentd.status import StatusSnapshot, chat_summary

SECRET = 'sk-ant-api03-Mask/Me+Now="quoted"\\ünï'


@pytest.fixture(autouse=True)
def registered() -> None:
    logs.register_secret(SECRET)


def leaks(text: str, value: str = SECRET) -> list[str]:
    """Every recognisable encoding of `value` still present in `text`."""
    raw = value.encode()
    found = [form for form in (value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
                               json.dumps(value, ensure_ascii=False)[1:-1]) if form in text]
    for offset in range(3):
        for prefix_byte in (b"\0", b"A", b"\xff"):
            blob = prefix_byte * offset + raw
            for enc in (base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode()):
                middle = enc[offset + 2:-4]  # free of the prefix and of what follows, whatever the alignment
                if len(middle) >= 8 and middle in text:
                    found.append(middle)
    return found


@pytest.mark.parametrize("offset", [0, 1, 2])
@pytest.mark.parametrize("after", [b"", b"x", b"xy", b"xyz"])
@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_base64_in_every_alignment(offset: int, after: bytes, urlsafe: bool, padded: bool) -> None:
    blob = b"u" * offset + SECRET.encode() + after
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(blob).decode()
    if not padded:
        encoded = encoded.rstrip("=")
    masked = logs.mask(f"Authorization: Basic {encoded} end")
    assert logs.MASK in masked
    assert leaks(masked) == []
    assert masked.endswith(" end")


def test_url_encoded_and_json_escaped_forms() -> None:
    text = (f"GET /x?key={quote(SECRET, safe='')}&k2={quote_plus(SECRET)} "
            f"body={json.dumps({'token': SECRET})} raw={json.dumps(SECRET, ensure_ascii=False)}")
    masked = logs.mask(text)
    assert leaks(masked) == [] and masked.count(logs.MASK) == 4


def test_url_passwords_are_masked_unregistered() -> None:
    masked = logs.mask("proxy https://bob:hunter2-pass@proxy.test:8443/p?q=1 and ftp://x:y@h/ and "
                       "https://host.test:8080/path@x stays")
    assert "hunter2-pass" not in masked and "https://bob:***@proxy.test:8443/p?q=1" in masked
    assert "ftp://x:***@h/" in masked
    assert "https://host.test:8080/path@x" in masked  # a port is not a password


def test_short_values_are_not_registered() -> None:
    logs.register_secret("abc")
    assert logs.mask("abc abcabc") == "abc abcabc"
    forms = logs.encoded_forms("abc/def+ghi=jkl")
    assert {"abc%2Fdef%2Bghi%3Djkl", "abc/def+ghi=jkl"} <= forms


def test_the_logging_filter_masks_encoded_forms() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.SecretMaskingFilter())
    logger = logging.getLogger("aiwm_agentd.test_masking")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("sent %s and %s", quote(SECRET, safe=""), base64.b64encode(SECRET.encode()).decode())
        try:
            raise RuntimeError(json.dumps({"k": SECRET}))
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert leaks(stream.getvalue()) == []
    assert "RuntimeError" in stream.getvalue()


def test_check_config_never_shows_url_passwords() -> None:
    urls = [s for s in SETTINGS if s.parse.__name__ in ("parse_http_url", "parse_ws_url", "parse_url_text")]
    assert {s.env for s in urls} >= {"AIWM_BASE_URL", "ANTHROPIC_BASE_URL", "TELEGRAM_API_BASE_URL",
                                     "DISCORD_API_BASE_URL", "DISCORD_GATEWAY_URL"}
    for setting in urls:
        scheme = "ws" if "GATEWAY" in setting.env else "https"
        shown = show_value(setting, f"{scheme}://user:pw-check-config-1@host.test/x")
        assert "pw-check-config-1" not in shown and "host.test" in shown, setting.env


def test_chat_status_never_shows_the_url_password() -> None:
    snapshot = StatusSnapshot(
        version="1", started_at=0.0, state="connected", last_error="", agent_id="a" * 24, agent_name="n",
        controller_enabled=True, controller_url="https://agent:pw-status-22@aiwm.test", controller_version="v5",
        connected_at=None, last_heartbeat_at=None, heartbeat_interval=60.0, heartbeat_failures_in_row=0,
        heartbeat_enum="", token_expires_at=None, token_refreshes=0, config_source="controller",
        config_updates=0, model="m", warnings=())
    summary = chat_summary(snapshot, 10.0)
    assert summary["controller"] == "https://agent:***@aiwm.test"
    assert "pw-status-22" not in json.dumps(summary)
