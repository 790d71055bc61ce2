"""The lean SDK import: no `mcp` for what the runner uses, the full package on demand, the plain import as fallback.

Every check runs in a fresh interpreter (the test process has imported the SDK the plain way long before).
The fallback tests put a small fake `claude_agent_sdk` (and `mcp`) first on the path, shaped like the real one,
and change its layout the ways a new SDK version could.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic, echo_handler

ROOT = Path(__file__).resolve().parents[2]

# Prints one JSON line describing the imported package; `script` runs between import_sdk() and the report.
PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(message)s", stream=sys.stdout)
from aiwm_agentd.runner.sdk_import import import_sdk, is_lean
import_sdk()
import claude_agent_sdk as sdk
extra = {{}}
{script}
print(json.dumps({{
    "lean": is_lean(), "mcp": sorted(m for m in sys.modules if m == "mcp" or m.startswith("mcp.")),
    "jsonschema": "jsonschema" in sys.modules, "file": sdk.__file__, **extra}}))
"""


def probe(script: str = "", path: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Run PROBE in a fresh interpreter; returns its report and its log lines."""
    python_path = f"{path}:{ROOT}" if path else str(ROOT)
    code = PROBE.format(script=textwrap.indent(textwrap.dedent(script), ""))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": python_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return json.loads(lines[-1]), lines[:-1]


# ------------------------------------------------------------------------------------- the installed SDK


def test_lean_import_binds_what_the_runner_uses_without_mcp() -> None:
    report, logs = probe("""
        from claude_agent_sdk import (AssistantMessage, ClaudeAgentOptions, ClaudeSDKClient, HookMatcher,
                                      ResultMessage, SystemMessage, TextBlock)
        import claude_agent_sdk.client, claude_agent_sdk.types
        options = ClaudeAgentOptions(model="claude-test", hooks={"PreToolUse": [HookMatcher(matcher="Bash")]})
        extra["same"] = (ClaudeSDKClient is claude_agent_sdk.client.ClaudeSDKClient
                         and ClaudeAgentOptions is claude_agent_sdk.types.ClaudeAgentOptions
                         and TextBlock is claude_agent_sdk.types.TextBlock)
        extra["model"] = ClaudeSDKClient(options).options.model
        extra["version"] = sdk.__version__
    """)
    assert report["lean"] is True and report["mcp"] == [] and report["jsonschema"] is False
    assert report["same"] is True and report["model"] == "claude-test" and report["version"]
    assert report["file"].endswith("site-packages/claude_agent_sdk/__init__.py")  # options.py finds the CLI
    assert logs == []


def test_a_name_only_the_full_init_binds_completes_the_package_in_place() -> None:
    report, _ = probe("""
        import claude_agent_sdk._internal.query as query_module
        before = set(vars(sdk)) - {"__getattr__"}
        create = sdk.create_sdk_mcp_server  # runs the real __init__ (imports mcp)

        @sdk.tool("add", "adds", {"a": int, "b": int})
        async def add(args):
            return {"content": [{"type": "text", "text": str(args["a"] + args["b"])}]}

        server = create("calc", tools=[add])
        bridge = query_module.SdkMcpBridge("calc", server["instance"])  # the stand-in builds the real one
        extra["bridge"] = type(bridge).__module__ + "." + type(bridge).__name__
        extra["all_bound"] = set(sdk.__all__) <= set(vars(sdk))
        extra["kept"] = before <= set(vars(sdk))
        extra["annotations"] = sdk.ToolAnnotations(read_only_hint=True).model_dump(exclude_none=True)
    """)
    assert report["lean"] is False and "mcp.types" in report["mcp"]
    assert report["bridge"] == "claude_agent_sdk._internal.sdk_mcp_bridge.SdkMcpBridge"
    assert report["all_bound"] is True and report["kept"] is True
    assert report["annotations"]


def test_an_sdk_already_imported_is_left_as_it_is() -> None:
    import claude_agent_sdk

    from aiwm_agentd.runner.sdk_import import import_sdk, is_lean

    import_sdk()
    assert sys.modules["claude_agent_sdk"] is claude_agent_sdk and not is_lean()


# ------------------------------------------------------------------------------------- a fake SDK's layouts

FAKE_FILES = {
    "mcp/__init__.py": "",
    "claude_agent_sdk/__init__.py": """
        '''Fake SDK.'''
        print("init ran")
        import mcp
        from ._internal.transport import Transport
        from .client import ClaudeSDKClient
        from .types import AssistantMessage, ClaudeAgentOptions, HookMatcher, ResultMessage, SystemMessage, TextBlock
        from ._internal._mcp_compat import build_tool_server
        def tool():
            return build_tool_server
    """,
    "claude_agent_sdk/_internal/__init__.py": "",
    "claude_agent_sdk/_internal/transport/__init__.py": "class Transport: pass\n",
    "claude_agent_sdk/_internal/_mcp_compat.py": "import mcp\nbuild_tool_server = 'built'\n",
    "claude_agent_sdk/_internal/sdk_mcp_bridge.py": "import mcp\nclass SdkMcpBridge: pass\nbridge_helper = 1\n",
    "claude_agent_sdk/_internal/query.py": "from .sdk_mcp_bridge import SdkMcpBridge\n",
    "claude_agent_sdk/client.py": ("from . import Transport\nfrom ._internal import query\n"
                                   "class ClaudeSDKClient: pass\n"),
    "claude_agent_sdk/types.py": "".join(f"class {name}: pass\n" for name in (
        "AssistantMessage", "ClaudeAgentOptions", "HookMatcher", "ResultMessage", "SystemMessage", "TextBlock")),
}


@pytest.fixture
def fake_sdk(tmp_path: Path) -> Iterator[Path]:
    for name, text in FAKE_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    yield tmp_path


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


FULL_CHECK = "extra['tool'] = sdk.tool()"


def test_the_fake_layout_imports_lean(fake_sdk: Path) -> None:
    report, logs = probe("extra['bound'] = sorted(n for n in vars(sdk) if not n.startswith('_'))", fake_sdk)
    assert report["lean"] is True and report["mcp"] == [] and logs == []  # __init__ never ran: no "init ran"
    assert "ClaudeSDKClient" in report["bound"] and "tool" not in report["bound"]


@pytest.mark.parametrize(("name", "old", "new", "reason"), [
    ("claude_agent_sdk/client.py", "class ClaudeSDKClient", "import mcp\nclass ClaudeSDKClient",
     "an eager submodule imported mcp"),
    ("claude_agent_sdk/__init__.py", "ClaudeAgentOptions, HookMatcher,", "ClaudeAgentOptions,",
     "HookMatcher not bound"),
    ("claude_agent_sdk/_internal/query.py", "import SdkMcpBridge", "import SdkMcpBridge, bridge_helper",
     "sdk_mcp_bridge.bridge_helper asked for at import time"),
    ("claude_agent_sdk/types.py", "class TextBlock: pass", "raise RuntimeError('types moved')",
     "RuntimeError: types moved"),
])
def test_a_changed_layout_falls_back_to_the_plain_import_and_says_why(
        fake_sdk: Path, name: str, old: str, new: str, reason: str) -> None:
    edit(fake_sdk, name, old, new)
    if "RuntimeError" in reason:  # a broken module breaks the plain import too: it must raise, not hide
        code = PROBE.format(script="")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={"PYTHONPATH": f"{fake_sdk}:{ROOT}", "PATH": "/usr/bin:/bin"})
        assert done.returncode != 0 and "types moved" in done.stderr
        assert "lean import of claude_agent_sdk failed (RuntimeError: types moved)" in done.stdout
        return
    report, logs = probe(FULL_CHECK, fake_sdk)
    assert report["lean"] is False and report["tool"] == "built"
    [warning, init_ran] = logs  # the partial modules were dropped: the real __init__ ran once, from scratch
    assert warning.startswith("LOG WARNING lean import of claude_agent_sdk failed") and reason in warning
    assert init_ran == "init ran"


# ------------------------------------------------------------------------------------- a real turn

TURN = """
from pathlib import Path
from aiwm_agentd.runner.sdk_import import import_sdk, is_lean
import_sdk()
from tests.integration.runner_support import RunnerHarness
h = RunnerHarness(Path(sys.argv[2]), sys.argv[1])
try:
    reply = h.ask("hello lean")
finally:
    h.close()
import json
print(json.dumps({"text": reply.text, "error": reply.error, "lean": is_lean(),
                  "mcp": [m for m in sys.modules if m == "mcp" or m.startswith("mcp.")]}))
"""


@pytest.mark.slow
def test_the_real_client_runs_a_turn_on_the_lean_sdk(tmp_path: Path) -> None:
    fake = FakeAnthropic().start()
    fake.set_handler(echo_handler)
    try:
        done = subprocess.run([sys.executable, "-c", "import sys\n" + TURN, fake.url, str(tmp_path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=100,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    finally:
        fake.stop()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"text": "echo: hello lean", "error": "", "lean": True, "mcp": []}
    assert fake.message_requests()
