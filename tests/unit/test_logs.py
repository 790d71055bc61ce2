"""Secret masking in log records, and journald priority prefixes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from aiwm_agentd import logs

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI2NWExYjJjM2Q0ZTVmNjA3MTgyOTNhNGIiLCJleHAiOjE3ODAwMDAwMDB9"
       ".Qk3vYc1lQh0gqzCq2yE3n1pBvX2j8a5i1u0oR7tW9sM")
TG_TOKEN = "7123456789:AAE5h3kLmNoPqRsTuVwXyZ0123456789abcd"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.SecretMaskingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("aiwm_agentd.test_logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


@pytest.fixture
def root_restored(monkeypatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in
             ("httpx", "httpcore", "urllib3", "discord.http", "discord.gateway", "telegram.ext")}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)


def test_registered_secret_masked_in_message(capture):
    logger, stream = capture
    logs.register_secret("reg-secret-111aaa")
    logger.info("connecting with reg-secret-111aaa now")
    assert stream.getvalue() == "INFO connecting with *** now\n"


def test_registered_secret_masked_in_args(capture):
    logger, stream = capture
    logs.register_secret("reg-secret-222bbb")
    logger.warning("config %s and %r", {"token": "reg-secret-222bbb"}, ["reg-secret-222bbb"])
    out = stream.getvalue()
    assert "reg-secret-222bbb" not in out
    assert out.count("***") == 2


def test_registered_secret_masked_in_traceback(capture):
    logger, stream = capture
    logs.register_secret("reg-secret-333ccc")
    try:
        raise RuntimeError("login failed for reg-secret-333ccc", TG_TOKEN)
    except RuntimeError:
        logger.exception("worker crashed")
    out = stream.getvalue()
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError" in out
    assert "reg-secret-333ccc" not in out
    assert TG_TOKEN not in out


def test_traceback_masked_with_exc_info_kwarg(capture):
    logger, stream = capture
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError as exc:
        logger.error("failed: %s", exc, exc_info=exc)
    out = stream.getvalue()
    assert JWT not in out
    assert JWT.split(".")[1] not in out
    assert "ValueError: bad token ***" in out


def test_longer_secret_masked_first(capture):
    logger, stream = capture
    logs.register_secret("overlap-abc")
    logs.register_secret("overlap-abc-def-ghi")
    logger.info("x overlap-abc-def-ghi y")
    assert stream.getvalue() == "INFO x *** y\n"


def test_short_values_not_registered():
    logs.register_secret("abc")
    logs.register_secret("")
    logs.register_secret(None)
    assert logs.mask("abc is fine") == "abc is fine"


def test_jwt_shaped_masked_without_registration(capture):
    logger, stream = capture
    logger.info("token=%s", JWT)
    assert stream.getvalue() == "INFO token=***\n"


@pytest.mark.parametrize("text", [
    f"token {TG_TOKEN} rejected",
    f"HTTP Request: POST https://api.telegram.org/bot{TG_TOKEN}/getMe \"HTTP/1.1 200 OK\"",
    f"http://127.0.0.1:8081/bot{TG_TOKEN}/getUpdates",
    f"bot{TG_TOKEN[:-1]}-/sendMessage",
])
def test_telegram_token_shaped_masked_without_registration(capture, text):
    logger, stream = capture
    secret_part = text.split("bot")[-1].split("/")[0] if "bot" in text else TG_TOKEN
    logger.info(text)
    out = stream.getvalue()
    assert TG_TOKEN.split(":")[1][:20] not in out
    assert secret_part not in out
    assert "***" in out


def test_non_token_numbers_untouched():
    assert logs.mask("listening on 127.0.0.1:9464 pid 12345") == "listening on 127.0.0.1:9464 pid 12345"


def test_bearer_value_masked():
    assert logs.mask("Authorization: Bearer opaque.token-value_123") == "Authorization: Bearer ***"


def test_bad_format_string_keeps_record(capture):
    logger, stream = capture
    logger.info("%d items", "not-a-number")
    assert "not-a-number" in stream.getvalue()


def test_mask_value():
    assert logs.mask_value("") == "(unset)"
    assert logs.mask_value(None) == "(unset)"
    assert logs.mask_value("abcdef") == "*** (6 chars)"


def test_parse_level():
    assert logs.parse_level(" debug ") == logging.DEBUG
    assert logs.parse_level("WARNING") == logging.WARNING
    with pytest.raises(ValueError):
        logs.parse_level("LOUD")


def test_journal_prefixes(monkeypatch, root_restored):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    logs.setup_logging(logging.DEBUG, stream)
    log = logging.getLogger("aiwm_agentd.j")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e\nsecond line")
    log.critical("c")
    lines = stream.getvalue().splitlines()
    assert lines == ["<7>aiwm_agentd.j: d", "<6>aiwm_agentd.j: i", "<4>aiwm_agentd.j: w",
                     "<3>aiwm_agentd.j: e", "<3>second line", "<2>aiwm_agentd.j: c"]


def test_journal_prefix_on_every_traceback_line(monkeypatch, root_restored):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    logs.setup_logging(logging.INFO, stream)
    logs.register_secret("tb-secret-444ddd")
    try:
        raise KeyError("tb-secret-444ddd")
    except KeyError:
        logging.getLogger("aiwm_agentd.j").exception("boom")
    lines = stream.getvalue().splitlines()
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)
    assert "tb-secret-444ddd" not in stream.getvalue()


def test_no_prefix_without_journal_stream(monkeypatch, root_restored):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.setup_logging(logging.INFO, stream)
    logging.getLogger("aiwm_agentd.j").info("hello %s", JWT)
    out = stream.getvalue()
    assert not out.startswith("<")
    assert "INFO" in out and "aiwm_agentd.j: hello ***" in out


def test_setup_quiets_noisy_libraries(root_restored):
    logs.setup_logging(logging.INFO, io.StringIO())
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("telegram.ext").level == logging.WARNING
    logs.setup_logging(logging.ERROR, io.StringIO())
    assert logging.getLogger("httpx").level == logging.ERROR
    # Even at DEBUG they stay at WARNING (Telegram URLs carry the token); the comment in
    # setup_logging suggests otherwise, the code is the safer choice.
    logs.setup_logging(logging.DEBUG, io.StringIO())
    assert logging.getLogger("httpx").level == logging.WARNING
