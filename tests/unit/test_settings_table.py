"""The settings table is the one place a key is declared: everything derived from it must agree with it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd import cli, logs
from aiwm_agentd.config import (
    SECRET_ENV_KEYS,
    SETTINGS,
    AgentConfig,
    ClaudeConfig,
    ConfigError,
    DaemonSettings,
    PlatformConfig,
    Setting,
    build_agent_config,
    describe_changes,
    describe_daemon_settings,
    load_daemon_settings,
)
from aiwm_agentd.config import parsers as p
from aiwm_agentd.config.table import AGENT_SETTINGS, DAEMON_SETTINGS
from aiwm_agentd.controller.wire import parse_connect_response

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "agent.env.example"
AGENT = "65a1b2c3d4e5f60718293a4b"
BASE_ENV = {"AIWM_BASE_URL": "http://127.0.0.1:3305", "AIWM_AGENT_ID": AGENT, "AIWM_AGENT_SECRET": "agent-secret-0a1b"}

# Fields that no key fills: computed (platform, enabled), bookkeeping (origins) or taken from the controller
# response as a whole (tools, allowed functions, MCP servers).
NOT_FROM_KEYS = {
    "daemon": {"origins"},
    "claude": {"tool_names", "allowed_functions", "mcp_servers"},
    "discord": {"platform", "enabled"},
    "telegram": {"platform", "enabled", "gateway_url"},
}
TARGETS: dict[str, Any] = {"daemon": DaemonSettings, "claude": ClaudeConfig, "discord": PlatformConfig,
                           "telegram": PlatformConfig}

# A valid raw value per parser, different from every default, as the env or the controller would send it.
SAMPLES: dict[Any, Any] = {
    p.parse_text: "sample-value-7",
    p.parse_positive_int: "7",
    p.parse_seconds: "42.5",
    p.parse_milliseconds: "42500",
    p.parse_permission_mode: "plan",
    p.parse_ids: "11,22",
    p.parse_http_url: "http://127.0.0.1:3999/proxy",
    p.parse_ws_url: "ws://127.0.0.1:3998/gateway",
}


def sample(parse: Any, default: Any) -> Any:
    if parse is p.parse_bool:
        return "false" if default else "true"
    return SAMPLES[parse]


def documented_keys() -> dict[str, str]:
    """KEY -> value for every `KEY=value` or `#KEY=value` line of the example env file."""
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def build(settings: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> AgentConfig:
    full_env = {**BASE_ENV, **(env or {})}
    ctl = None if settings is None else parse_connect_response(
        {"accessToken": "tok-1", "expiresIn": 86400, "instruction": "Hi.", "settings": settings})
    return build_agent_config(full_env, ctl, load_daemon_settings(full_env))


def provenance(cfg: AgentConfig, key: str) -> tuple[str, str]:
    [row] = [(r.shown, r.origin) for r in cfg.provenance if r.key == key]
    return row


def value_of(cfg: AgentConfig, setting: Setting) -> Any:
    return getattr(getattr(cfg, setting.section), setting.field)


# -- the table itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("section", sorted(TARGETS))
def test_every_field_is_filled_by_exactly_one_key(section: str) -> None:
    fields = {f.name for f in dataclasses.fields(TARGETS[section])} - NOT_FROM_KEYS[section]
    filled = [s.field for s in SETTINGS if s.section == section]
    assert sorted(filled) == sorted(fields)


def test_names_are_unique() -> None:
    envs = [s.env for s in SETTINGS]
    controller_names = [n for s in SETTINGS for n in (s.flat, s.nested) if n]
    assert len(envs) == len(set(envs))
    assert len({s.key for s in SETTINGS}) == len(SETTINGS)
    assert len(controller_names) == len(set(controller_names))


def test_every_key_has_a_doc_and_a_default_its_parser_accepts() -> None:
    for s in SETTINGS:
        assert s.doc.strip(), s.env
        default = s.default
        if default in ("", None, ()) or s.parse is p.parse_pem_file:
            continue
        shown = s.show(default) if s.show else (",".join(default) if isinstance(default, tuple) else str(default))
        assert s.parse(shown) == default, s.env


def test_secret_keys_are_the_credentials() -> None:
    assert set(SECRET_ENV_KEYS) == {"AIWM_AGENT_SECRET", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY",
                                    "DISCORD_TOKEN", "TELEGRAM_BOT_TOKEN"}


# -- etc/agent.env.example -----------------------------------------------------------------------


def test_env_example_documents_every_key_and_no_other() -> None:
    documented = documented_keys()
    assert sorted(set(s.env for s in SETTINGS) - set(documented)) == []
    assert sorted(set(documented) - {s.env for s in SETTINGS}) == []


def test_env_example_values_are_the_table_defaults() -> None:
    table = {s.env: s for s in SETTINGS}
    for key, raw in documented_keys().items():
        if raw:
            assert table[key].parse(raw) == table[key].default, key


# -- derived behaviour, for every row ------------------------------------------------------------


@pytest.mark.parametrize("setting", DAEMON_SETTINGS, ids=[s.env for s in DAEMON_SETTINGS])
def test_daemon_key_read_from_env(setting: Setting, tmp_path: Path) -> None:
    if setting.parse is p.parse_pem_file:
        raw: Any = str(tmp_path / "ca.pem")
        Path(raw).write_text("-----BEGIN CERTIFICATE-----\n")
    elif setting.parse is p.parse_health_addr:
        raw = "127.0.0.1:9999"
    elif setting.parse is p.parse_log_level:
        raw = "debug"
    elif setting.parse is p.parse_path:
        raw = str(tmp_path / "state")
    elif setting.parse is p.parse_url_text:
        raw = "http://127.0.0.1:4000"
    elif setting.env == "AIWM_AGENT_ID":
        raw = "0123456789abcdef01234567"
    else:
        raw = sample(setting.parse, setting.default)
    settings = load_daemon_settings({**BASE_ENV, setting.env: raw})
    assert getattr(settings, setting.field) == setting.parse(raw)
    assert getattr(settings, setting.field) != setting.default
    assert settings.origins[setting.env] == "env"
    assert getattr(load_daemon_settings({**BASE_ENV}), setting.field) == (
        setting.default_for({}) if setting.env not in BASE_ENV else setting.parse(BASE_ENV[setting.env]))


@pytest.mark.parametrize("setting", AGENT_SETTINGS, ids=[s.key for s in AGENT_SETTINGS])
def test_agent_key_layers(setting: Setting) -> None:
    raw = sample(setting.parse, setting.default)
    cfg = build(None, {setting.env: raw})
    assert value_of(cfg, setting) == setting.parse(raw) != setting.default
    assert provenance(cfg, setting.key)[1] == f"env ({setting.env})"
    assert value_of(build(None, {}), setting) == setting.default
    assert provenance(build(None, {}), setting.key)[1] == "default"
    for name, parse in ((setting.flat, setting.flat_parse or setting.parse), (setting.nested, setting.parse)):
        if not name:
            continue
        controller_raw = sample(parse, setting.default)
        nested: dict[str, Any] = {}
        node = nested
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = controller_raw
        cfg = build(nested, {setting.env: raw})
        assert value_of(cfg, setting) == parse(controller_raw)
        assert provenance(cfg, setting.key)[1] == f"controller (settings.{name})"


def test_bad_env_value_names_the_env_key_for_every_checked_key() -> None:
    checked = [s for s in AGENT_SETTINGS if s.parse not in (p.parse_text, p.parse_ids)]  # any text is an id list
    assert len(checked) > 10
    for s in checked:
        with pytest.raises(ConfigError) as info:
            build(None, {s.env: "{not valid}"})
        assert info.value.key == s.env


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.secret], ids=[s.env for s in SETTINGS if s.secret])
def test_secrets_are_masked_everywhere(setting: Setting) -> None:
    secret = f"{setting.env.lower()}-value-Zq81"
    env = {**BASE_ENV, setting.env: secret}
    settings = load_daemon_settings(env)
    cfg = build_agent_config(env, None, settings)
    shown = [r.shown for r in (*describe_daemon_settings(settings), *cfg.provenance)]
    assert secret not in "\n".join(shown)
    assert f"*** ({len(secret)} chars)" in shown
    assert logs.mask(f"x {secret} y") == "x *** y"


# -- reload diffs --------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", [s for s in AGENT_SETTINGS if s.secret], ids=[s.key for s in AGENT_SETTINGS
                                                                                  if s.secret])
def test_changed_secret_says_changed_whatever_its_length(setting: Setting) -> None:
    old = build(None, {setting.env: "first-secret-aaaa"})
    for new_value in ("other-secret-bbbb", "a-much-longer-secret-cccc"):
        changes = describe_changes(old, build(None, {setting.env: new_value}))
        assert changes == [f"{setting.key}: changed"]


def test_origin_only_change_is_not_a_change() -> None:
    assert describe_changes(build({}, {"CLAUDE_MODEL": "m1"}), build({"claude_model": "m1"}, {})) == []


def test_non_secret_change_shows_both_values() -> None:
    assert describe_changes(build(None, {}), build(None, {"CLAUDE_MAX_TURNS": "9"})) == ["claude.max_turns: 100 -> 9"]


# -- the controller URL's password ---------------------------------------------------------------


def test_url_password_never_shown() -> None:
    url = "https://agent:url-Pass-77x@controller.example.com"
    settings = load_daemon_settings({**BASE_ENV, "AIWM_BASE_URL": url})
    [row] = [r for r in describe_daemon_settings(settings) if r.key == "AIWM_BASE_URL"]
    assert row.shown == "https://agent:***@controller.example.com"
    assert logs.mask(url) == "https://agent:***@controller.example.com"
    with pytest.raises(ConfigError) as info:
        load_daemon_settings({**BASE_ENV, "AIWM_BASE_URL": "http://agent:url-Pass-77x@192.0.2.1"})
    assert "url-Pass-77x" not in str(info.value) and "AIWM_ALLOW_INSECURE_HTTP" in str(info.value)


# -- check-config --------------------------------------------------------------------------------


def test_check_config_lists_every_key_masked_with_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    env_file = tmp_path / "agent.env"
    env_file.write_text("AIWM_ENABLED=false\nAIWM_AGENT_SECRET=check-secret-1234\nDISCORD_TOKEN=check-dtok-5678\n"
                        "CLAUDE_MAX_TURNS=7\n")
    assert cli.main(["check-config", "--env-file", str(env_file)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.startswith("  ")}
    assert sorted(rows) == sorted([*(s.key for s in SETTINGS), "instruction"])
    assert "check-secret-1234" not in out and "check-dtok-5678" not in out
    assert rows["AIWM_AGENT_SECRET"].split() == ["***", "(17", "chars)", "env"]
    assert rows["discord.token"].split() == ["***", "(15", "chars)", "env", "(DISCORD_TOKEN)"]
    assert rows["AIWM_HEARTBEAT_INTERVAL"].split() == ["60.0", "default"]
    assert rows["AIWM_STATE_DIR"].split() == ["/var/lib/aiwm-agentd", "default"]
    assert rows["AIWM_HEALTH_ADDR"].split() == ["127.0.0.1:9464", "default"]
    assert rows["claude.max_turns"].split() == ["7", "env", "(CLAUDE_MAX_TURNS)"]
    assert rows["claude.model"].split() == ["claude-haiku-4-5", "default"]
