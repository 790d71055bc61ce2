"""From a configuration snapshot to what the Claude Code CLI child gets: tools, environment, paths, options.

Pure functions apart from `RunnerPaths.create()` and `write_mcp_config()`; `build_options` imports the SDK and
is only called from the runner's thread.

Tool whitelist mapping (controller -> Claude Code)
--------------------------------------------------
The whitelist fails closed. `ClaudeConfig.tool_names` is what the snapshot resolved (config/snapshot._tools):
the controller's v1/v2/v5 `tools[].name`, or the last list it sent (kept on disk) while it is unreachable, or
`CLAUDE_ALLOWED_TOOLS` in local mode; an empty tuple means no tool at all. `None` means a connected
controller sent no list (v3/v4): then the model gets the MCP servers the controller configured and no
built-in tool. Otherwise the union of `tool_names` and v5 `allowedFunctions` is the whitelist, and each name
is mapped so:

- a Claude Code built-in, by its exact name only (`Bash`, `Read`, ...): no aliases, no case folding. A
  controller name such as `search`, `fetch`, `run_command` or `terminal` is *not* widened to WebSearch,
  WebFetch or Bash: it names a tool of the controller's MCP server;
- `mcp__<Server>__<tool>` -> that MCP tool, and `mcp__<Server>` -> every tool of that server;
- any other plain name -> a tool of that name on each configured MCP server (`mcp__<Server>__<name>`): the
  controller's own tools are served by its `Builtin` MCP server. With no MCP server it maps to nothing and
  is reported as unknown.

Enforcement, because `allowed_tools` in the SDK only auto-approves and does not hide anything:
- `tools=[built-ins]` is the base set the model sees (`[]` = no built-in tool at all);
- MCP servers with no whitelisted tool are removed whole with `disallowed_tools=["mcp__<Server>"]`;
- for a server with some whitelisted tools, the other tool names are only known once the CLI has connected
  to it: the runner reads them from `get_mcp_status()` after connecting and adds them to `disallowed_tools`
  of every later client, and a PreToolUse hook denies any non-whitelisted call in the meantime;
- `allowed_tools` = the whitelist, so whitelisted tools run without a permission prompt (there is nobody to
  answer one in a chat).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiwm_agentd.config import AgentConfig, ClaudeConfig
from aiwm_agentd.sandbox import launcher, mcp_routes
from aiwm_agentd.sandbox.identity import SandboxState
from aiwm_agentd.sandbox.spawn_client import RUN_DIR_PREFIX, SOCKET_VAR

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeAgentOptions

log = logging.getLogger("aiwm_agentd.runner")

BUILTIN_TOOLS = (
    "Agent", "Bash", "BashOutput", "Edit", "ExitPlanMode", "Glob", "Grep", "KillShell", "MultiEdit",
    "NotebookEdit", "Read", "Skill", "SlashCommand", "Task", "TodoWrite", "WebFetch", "WebSearch", "Write",
)
# Variables the CLI child inherits from the daemon unchanged; every other inherited variable is blanked.
_PASSTHROUGH = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "CLAUDE_CODE_MAX_RETRIES",
})
# The CLI retries a failed API call 10 times by default (~3 minutes when the API is unreachable); our own
# turn timeout bounds a turn, so a couple of quick retries is enough. The daemon's env may override it.
DEFAULT_MAX_RETRIES = "2"
# Permission mode used instead of bypassPermissions when running as root (the CLI refuses that combination).
ROOT_PERMISSION_FALLBACK = "acceptEdits"


@dataclass(frozen=True)
class ToolPlan:
    """What the model may use, in the SDK's terms (see the module docstring)."""

    restricted: bool
    builtins: tuple[str, ...] = ()
    mcp_tools: frozenset[str] = frozenset()  # mcp__S__t names that are whitelisted
    mcp_servers: frozenset[str] = frozenset()  # servers whitelisted whole (mcp__S)
    blocked_servers: tuple[str, ...] = ()  # configured servers with nothing whitelisted
    unknown: tuple[str, ...] = ()  # names mapped to nothing

    def allows(self, tool_name: str) -> bool:
        if not self.restricted:
            return True
        if tool_name in self.builtins or tool_name in self.mcp_tools:
            return True
        parts = tool_name.split("__")
        return len(parts) >= 3 and parts[0] == "mcp" and parts[1] in self.mcp_servers

    def needs_call_guard(self) -> bool:
        """A server is partly whitelisted: its other tools must be refused at call time until known."""
        return self.restricted and bool(self.mcp_tools)

    def hidden_tools(self, discovered: Mapping[str, tuple[str, ...]]) -> list[str]:
        """Tool names of partly whitelisted servers (as discovered) that must not be shown."""
        hidden: list[str] = []
        for server, names in discovered.items():
            if server in self.blocked_servers or server in self.mcp_servers:
                continue
            hidden.extend(n for n in names if not self.allows(n))
        return sorted(hidden)


def plan_tools(claude: ClaudeConfig) -> ToolPlan:
    """The whitelist in the SDK's terms (see the module docstring); never unrestricted."""
    servers = list(claude.mcp_servers)
    if claude.tool_names is None and not claude.allowed_functions:
        return ToolPlan(restricted=True, mcp_servers=frozenset(servers))
    names = list(claude.tool_names or ()) + list(claude.allowed_functions)
    builtins: list[str] = []
    mcp_tools: set[str] = set()
    whole: set[str] = set()
    unknown: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.startswith("mcp__"):
            parts = name.split("__", 2)
            if len(parts) == 2 or (len(parts) == 3 and parts[2] in ("", "*")):
                whole.add(parts[1])
            else:
                mcp_tools.add(name)
            continue
        if name in BUILTIN_TOOLS:
            if name not in builtins:
                builtins.append(name)
        elif servers:
            mcp_tools.update(f"mcp__{server}__{name}" for server in servers)
        else:
            unknown.append(name)
    used = whole | {t.split("__")[1] for t in mcp_tools}
    return ToolPlan(
        restricted=True,
        builtins=tuple(builtins),
        mcp_tools=frozenset(mcp_tools),
        mcp_servers=frozenset(whole),
        blocked_servers=tuple(s for s in servers if s not in used),
        unknown=tuple(unknown),
    )


@dataclass(frozen=True)
class RunnerPaths:
    """Everything the CLI writes lives under `<state_dir>/claude`; our session map under `sessions/`."""

    root: Path

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> RunnerPaths:
        return cls(Path(state_dir))

    @property
    def claude_home(self) -> Path:
        return self.root / "claude"

    @property
    def config_dir(self) -> Path:
        return self.claude_home / "config"

    @property
    def workdir(self) -> Path:
        return self.claude_home / "work"

    @property
    def mcp_config(self) -> Path:
        return self.claude_home / "mcp.json"

    @property
    def children_dir(self) -> Path:
        """Per-child sources the launcher copies into the tools workspace (they hold the child's token)."""
        return self.claude_home / "children"

    @property
    def instruction_file(self) -> Path:
        return self.claude_home / "instruction.md"

    @property
    def launcher(self) -> Path:
        return self.claude_home / "launch"

    @property
    def sessions_dir(self) -> Path:
        return self.root / "sessions"

    def create(self) -> None:
        for directory in (self.claude_home, self.config_dir, self.workdir, self.sessions_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Per-child sources left by a previous run (a crash, or a close that did not forget them): the launcher
        # copied each at its child's start, so none is needed any more, and their tokens are dead or dying.
        for stale in self.children_dir.glob("mcp-*.json"):
            stale.unlink(missing_ok=True)


def effective_permission_mode(mode: str, euid: int | None = None) -> str:
    euid = os.geteuid() if euid is None else euid
    if mode == "bypassPermissions" and euid == 0:
        return ROOT_PERMISSION_FALLBACK
    return mode


def build_env(claude: ClaudeConfig, paths: RunnerPaths, inherited: Mapping[str, str]) -> dict[str, str]:
    """The CLI child's environment, as `options.env`.

    The SDK merges `options.env` over the daemon's own environment, so every inherited variable that is not
    on the pass-through list is set to "" here: bot tokens, the agent secret, NOTIFY_SOCKET, stray
    ANTHROPIC_* settings. The CLI treats an empty variable as unset.
    """
    env = {key: "" for key in inherited if key not in _PASSTHROUGH and not key.startswith("LC_")}
    env.update({
        "HOME": str(paths.claude_home),
        "CLAUDE_CONFIG_DIR": str(paths.config_dir),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": inherited.get("CLAUDE_CODE_MAX_RETRIES") or DEFAULT_MAX_RETRIES,
        "ANTHROPIC_API_KEY": claude.api_key,
        "CLAUDE_CODE_OAUTH_TOKEN": claude.oauth_token,
    })
    if claude.base_url:
        env["ANTHROPIC_BASE_URL"] = claude.base_url
    return env


def write_mcp_config(paths: RunnerPaths, servers: Mapping[str, Any]) -> Path:
    """The MCP servers go to the CLI as a 0600 file: inline JSON would put the agent token on its argv."""
    return _write_private(paths.mcp_config, json.dumps({"mcpServers": dict(servers)}, sort_keys=True).encode())


def child_mcp_source(paths: RunnerPaths, token: str) -> Path:
    """The per-child MCP configuration (named by a digest of the token, which is never in a file name)."""
    digest = hashlib.sha256(token.encode()).hexdigest()[:24]
    return paths.children_dir / f"mcp-{digest}.json"


def write_child_mcp_config(paths: RunnerPaths, child: ChildSandbox, servers: Mapping[str, Any]) -> Path:
    """A separated child's MCP configuration: the entries that carry the daemon's credential (the agent JWT)
    point at the loopback proxy with the child's token (sandbox/mcp_routes.py), so the copy in the tools
    workspace holds nothing that outlives the child. 0600 in the daemon's state dir; `forget_child` removes
    it when the child closes."""
    rewritten = mcp_routes.child_servers(servers, child.token, child.proxy_url)
    data = json.dumps({"mcpServers": rewritten}, sort_keys=True).encode()
    return _write_private(child_mcp_source(paths, child.token), data)


def forget_child(paths: RunnerPaths, token: str) -> None:
    """Remove what was written for the child holding `token` (call with its revoke; harmless if none)."""
    if token:
        child_mcp_source(paths, token).unlink(missing_ok=True)


def write_instruction(paths: RunnerPaths, instruction: str) -> Path:
    """The instruction goes to the CLI as a 0600 file (`--system-prompt-file`): on argv it would be visible in
    `ps`, and over 128 KiB (one argument's limit) or with a NUL every turn would fail."""
    return _write_private(paths.instruction_file, instruction.replace("\0", "").encode())


def _write_private(target: Path, data: bytes) -> Path:
    if target.exists() and target.read_bytes() == data:
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class ChildSandbox:
    """What one CLI child gets from the sandbox: its launcher, and when separated its workspace (owned by the
    tools user) and its per-child token for the loopback Anthropic API proxy."""

    state: SandboxState
    token: str = ""
    token_variable: str = "ANTHROPIC_API_KEY"
    proxy_url: str = ""

    def workspace(self, paths: RunnerPaths) -> Path:
        """The instance's own directory in the tools workspace (setpriv: instances share the tools user)."""
        assert self.state.tools_dir is not None
        return self.state.tools_dir / paths.root.name

    def run_dir(self, paths: RunnerPaths) -> str:
        """Where the child finds its instruction and MCP configuration: the spawner makes a directory per
        child and puts it in place of RUN_DIR_PREFIX; setpriv copies them into the workspace's run/."""
        if self.state.spawner:
            return RUN_DIR_PREFIX
        return str(self.workspace(paths) / "run")


def build_separated_env(child: ChildSandbox, paths: RunnerPaths, inherited: Mapping[str, str],
                        cli: str, mcp_source: Path | None) -> dict[str, str]:
    """`options.env` of a separated child: the launcher's inputs, and the child's variables (the launcher passes
    only launcher.CHILD_ENV_NAMES on, through `env -i`). No long-lived secret: the credential is the
    per-child token, the API is the loopback proxy."""
    env = {key: "" for key in inherited if key not in _PASSTHROUGH and not key.startswith("LC_")}
    if child.state.spawner:  # the spawner sets HOME, CLAUDE_CONFIG_DIR, USER and LOGNAME in its own unit
        env[SOCKET_VAR] = child.state.spawner_socket
    else:
        assert child.state.identity is not None
        work = child.workspace(paths)
        env.update({
            launcher.WORKSPACE_VAR: str(work),
            "HOME": str(work / "home"),
            "CLAUDE_CONFIG_DIR": str(work / "config"),
            "USER": child.state.identity.name,
            "LOGNAME": child.state.identity.name,
        })
    env.update({
        launcher.CLI_VAR: cli,
        launcher.INSTRUCTION_VAR: str(paths.instruction_file),
        launcher.MCP_VAR: str(mcp_source) if mcp_source is not None else "",
        "SHELL": inherited.get("SHELL") or "/bin/sh",
        "PATH": inherited.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": inherited.get("CLAUDE_CODE_MAX_RETRIES") or DEFAULT_MAX_RETRIES,
        "ANTHROPIC_API_KEY": "",
        "CLAUDE_CODE_OAUTH_TOKEN": "",
        "ANTHROPIC_BASE_URL": child.proxy_url,
    })
    env[child.token_variable] = child.token
    return env


def bundled_cli() -> str:
    """The SDK's bundled CLI (what it runs when `cli_path` is unset)."""
    import claude_agent_sdk

    return str(Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")


@dataclass
class OptionInputs:
    """Per-client inputs that are not part of the snapshot."""

    resume: str | None = None
    stderr: Callable[[str], None] | None = None
    hidden_tools: list[str] = field(default_factory=list)
    sandbox: ChildSandbox | None = None


def build_options(config: AgentConfig, paths: RunnerPaths, inputs: OptionInputs,
                  inherited: Mapping[str, str] | None = None) -> ClaudeAgentOptions:
    from claude_agent_sdk import ClaudeAgentOptions, HookMatcher

    claude = config.claude
    plan = plan_tools(claude)
    hooks: Any = None
    if plan.needs_call_guard():
        hooks = {"PreToolUse": [HookMatcher(matcher=None, hooks=[_tool_guard(plan)])]}
    disallowed = [f"mcp__{server}" for server in plan.blocked_servers] + list(inputs.hidden_tools)
    child = inputs.sandbox
    mcp_source: Path | None = None
    if claude.mcp_servers and child is not None and child.state.separated and child.token:
        mcp_source = write_child_mcp_config(paths, child, claude.mcp_servers)  # no JWT for the tools' side
    elif claude.mcp_servers:
        mcp_source = write_mcp_config(paths, claude.mcp_servers)
    mcp: Any = mcp_source if mcp_source is not None else {}
    # A file, read by the CLI at each start: never argv (ps, 128 KiB, NUL). `--system-prompt-snapshot off`
    # (the SDK sends its `snapshot` flag for custom prompts only): a resumed session gets the instruction as
    # it is now, not the one recorded on its first turn.
    system_prompt: Any = {"type": "file", "path": str(write_instruction(paths, config.instruction))}
    inherited = os.environ if inherited is None else inherited
    env = build_env(claude, paths, inherited)
    cli_path, cwd = claude.cli_path or None, str(paths.workdir)
    if child is not None:
        cli = claude.cli_path or bundled_cli()
        cli_path = str(paths.launcher)
        if child.state.separated:
            run_dir = child.run_dir(paths)
            system_prompt = {"type": "file", "path": f"{run_dir}/instruction.md"}
            if mcp_source is not None:  # setpriv: per child under its own name (it holds the child's token)
                mcp = f"{run_dir}/mcp.json" if child.state.spawner else f"{run_dir}/{mcp_source.name}"
            env = build_separated_env(child, paths, inherited, cli, mcp_source)
            cwd = str(paths.claude_home)  # the daemon's side; the launcher moves the CLI to work/
        else:
            env[launcher.CLI_VAR] = cli
    return ClaudeAgentOptions(
        system_prompt=system_prompt,
        model=claude.model or None,
        max_turns=claude.max_turns,
        permission_mode=effective_permission_mode(claude.permission_mode),  # type: ignore[arg-type]
        tools=list(plan.builtins) if plan.restricted else None,
        allowed_tools=(list(plan.builtins) + sorted(plan.mcp_tools)
                       + [f"mcp__{s}" for s in sorted(plan.mcp_servers)]) if plan.restricted else [],
        disallowed_tools=disallowed,
        mcp_servers=mcp,
        strict_mcp_config=True,
        setting_sources=[],
        hooks=hooks,
        env=env,
        cwd=cwd,
        cli_path=cli_path,
        extra_args={"system-prompt-snapshot": "off"},
        resume=inputs.resume,
        stderr=inputs.stderr,
    )


def _tool_guard(plan: ToolPlan) -> Any:
    async def guard(hook_input: Any, tool_use_id: str | None, context: Any) -> Any:
        name = str(hook_input.get("tool_name", ""))
        if plan.allows(name):
            return {}
        log.warning("refused a call to %s: not in this agent's tool whitelist", name)
        return {"hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": f"{name} is not enabled for this agent",
        }}

    return guard
