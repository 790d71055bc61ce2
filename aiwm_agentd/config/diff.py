"""What changed between two snapshots, in lines fit for the journal and the reload notice.

Values come from the provenance display forms, so a secret is never shown: a changed secret says
"changed", whatever its length. Origins alone (same value, now from the env instead of the controller)
are not a change: the workers would do nothing differently.
"""

from __future__ import annotations

from typing import Any

from aiwm_agentd.config.model import AgentConfig
from aiwm_agentd.config.table import AGENT_SETTINGS, Setting
from aiwm_agentd.controller.wire import without_auth


def _value(config: AgentConfig, setting: Setting) -> Any:
    return getattr(getattr(config, setting.section), setting.field)


def describe_changes(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Human lines naming what changed between two snapshots (secret values never shown)."""
    secrets = {s.key: s for s in AGENT_SETTINGS if s.secret}
    before = {p.key: p.shown for p in old.provenance}
    changes: list[str] = []
    for p in new.provenance:
        if p.key in secrets:
            if _value(old, secrets[p.key]) != _value(new, secrets[p.key]):
                changes.append(f"{p.key}: changed")
        elif before.get(p.key) != p.shown:
            changes.append(f"{p.key}: {before.get(p.key, '(unset)')} -> {p.shown}")
    if old.instruction != new.instruction and not any(c.startswith("instruction") for c in changes):
        changes.append("instruction: text changed")
    if (old.claude.tool_names, old.claude.allowed_functions) != (new.claude.tool_names, new.claude.allowed_functions):
        changes.append("tools: whitelist changed")
    if without_auth(old.claude.mcp_servers) != without_auth(new.claude.mcp_servers):
        changes.append("mcp servers changed")
    return changes
