"""Import the Claude Agent SDK without the `mcp` package, which it only needs for in-process MCP servers.

Why: `import claude_agent_sdk` costs ~33 MiB of the idle daemon's RSS, and ~26 MiB of that is `mcp` (its
pydantic models, httpx2, starlette, opentelemetry, multiprocessing...) plus `jsonschema`. The SDK's package
`__init__` imports them only for `tool()` / `create_sdk_mcp_server()` / `ToolAnnotations` (in-process SDK MCP
servers, which the daemon never uses), and its query module imports the in-process server bridge at its top.
The classes the runner uses (ClaudeSDKClient, ClaudeAgentOptions, HookMatcher and the message types) live in
submodules that never need `mcp`.

Why not `importlib.util.LazyLoader` on `mcp`: every SDK import of it is `from mcp.types import Name` (the
attribute access runs the lazy module at once) and `__init__` subclasses `mcp.types.ToolAnnotations`, so a
lazy `mcp` is executed during the SDK import anyway (measured: no saving).

How: the package module is created from its spec without running its `__init__`; the relative
`from .x import names` statements of that `__init__` (read with `ast`, so a new SDK version's own list is
followed) are executed in order, except the one from the mcp compatibility module, while a stand-in for the
in-process bridge module is in `sys.modules`. Any name not bound that way (`tool`, `create_sdk_mcp_server`,
`ToolAnnotations`...) runs the real `__init__` in place on first access (PEP 562 `__getattr__`), so it loads
`mcp` then and the package becomes exactly the plain one; the stand-in bridge loads the real one on first use.

Fails loudly: if the SDK's layout no longer fits (a missing name, the stand-in asked for something else, an
eager submodule that imports `mcp` anyway) the partial modules are dropped, a warning names the reason, and
the plain `import claude_agent_sdk` runs instead (correct, only larger).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import sys
import threading
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

PACKAGE = "claude_agent_sdk"
BRIDGE_MODULE = f"{PACKAGE}._internal.sdk_mcp_bridge"
BRIDGE_CLASS = "SdkMcpBridge"
# Relative modules of the package whose import executes `mcp` (left to the real `__init__`).
MCP_MODULES = frozenset({"_internal._mcp_compat", "_internal.sdk_mcp_bridge"})
# What the daemon takes from the package; the lean import is refused if one is not bound eagerly.
REQUIRED_NAMES = ("ClaudeSDKClient", "ClaudeAgentOptions", "HookMatcher", "AssistantMessage", "ResultMessage",
                  "SystemMessage", "TextBlock")

# One lean import or completion at a time (the runner imports in its own thread; a second thread asking the
# half-built package for a name waits here instead of racing the import).
_lock = threading.RLock()


class LeanImportError(ImportError):
    """The installed SDK does not fit the lean import (its layout changed): the plain import is used."""


def import_sdk() -> None:
    """Import `claude_agent_sdk` without `mcp` when the installed SDK allows it, else the plain way.

    Raises ImportError (like `import claude_agent_sdk`) only when the SDK is not importable at all."""
    with _lock:
        if PACKAGE in sys.modules:
            return
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.loader is None or spec.origin is None:
            importlib.import_module(PACKAGE)  # raises the usual ModuleNotFoundError
            return
        before = set(sys.modules)
        try:
            _lean_import(spec, spec.origin)
        except Exception as exc:  # any surprise from a changed SDK: fall back, say why
            for name in set(sys.modules) - before:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    del sys.modules[name]
            log.warning("lean import of %s failed (%s: %s); importing it whole, mcp included (~25 MiB more)",
                        PACKAGE, type(exc).__name__, exc)
            importlib.import_module(PACKAGE)


def is_lean() -> bool:
    """True while the imported SDK package is the partial one (its real `__init__` has not run)."""
    package = sys.modules.get(PACKAGE)
    return package is not None and "__getattr__" in vars(package)


def _lean_import(spec: ModuleSpec, init_path: str) -> None:
    tree = ast.parse(Path(init_path).read_text(encoding="utf-8"), init_path)
    package = importlib.util.module_from_spec(spec)
    package.__doc__ = ast.get_docstring(tree, clean=False)
    package.__getattr__ = _make_completer(package, spec)  # type: ignore[method-assign]
    mcp_before = {name for name in sys.modules if _is_mcp(name)}
    sys.modules[PACKAGE] = package
    sys.modules[BRIDGE_MODULE] = _bridge_stand_in()
    try:
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module not in MCP_MODULES:
                _bind(package, node)
    finally:
        del sys.modules[BRIDGE_MODULE]
    loaded = sorted(name for name in sys.modules if _is_mcp(name) and name not in mcp_before)
    if loaded:
        raise LeanImportError(f"an eager submodule imported {loaded[0]}")
    missing = [name for name in REQUIRED_NAMES if name not in vars(package)]
    if missing:
        raise LeanImportError(f"{', '.join(missing)} not bound by the package's own submodule imports")


def _bind(package: ModuleType, node: ast.ImportFrom) -> None:
    """Execute one `from .module import a, b as c` of the real `__init__` into the partial package."""
    for alias in node.names:
        if alias.name == "*":
            raise LeanImportError(f"star import from .{node.module}")
        if node.module is None:  # `from . import submodule`
            value: Any = importlib.import_module(f"{PACKAGE}.{alias.name}")
        else:
            value = getattr(importlib.import_module(f"{PACKAGE}.{node.module}"), alias.name)
        setattr(package, alias.asname or alias.name, value)


def _make_completer(package: ModuleType, spec: ModuleSpec) -> Any:
    """The partial package's `__getattr__`: a name it lacks runs the real `__init__` in place, then answers."""

    def complete(name: str) -> Any:
        if name.startswith("__") and name != "__all__":
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        with _lock:
            namespace = vars(package)
            if "__getattr__" in namespace and name not in namespace:
                del namespace["__getattr__"]
                log.info("%s.%s asked for: running the SDK's full __init__ (imports mcp)", PACKAGE, name)
                assert spec.loader is not None
                spec.loader.exec_module(package)
            if name in namespace:
                return namespace[name]
        raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")

    return complete


def _bridge_stand_in() -> ModuleType:
    """A module that answers `from .sdk_mcp_bridge import SdkMcpBridge` without importing `mcp`."""
    stand_in = ModuleType(BRIDGE_MODULE, "Stand-in until an in-process SDK MCP server is used (aiwm_agentd).")

    class DeferredSdkMcpBridge:
        """Builds the real SdkMcpBridge (importing `mcp`) the first time an in-process server needs one."""

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            real: Any = getattr(importlib.import_module(BRIDGE_MODULE), BRIDGE_CLASS)
            return real(*args, **kwargs)

    def refuse(name: str) -> Any:
        if name.startswith("__"):  # the import system probes __path__ and the like
            raise AttributeError(name)
        raise LeanImportError(f"{BRIDGE_MODULE}.{name} asked for at import time")

    setattr(stand_in, BRIDGE_CLASS, DeferredSdkMcpBridge)
    stand_in.__getattr__ = refuse  # type: ignore[method-assign]
    return stand_in


def _is_mcp(module_name: str) -> bool:
    return module_name == "mcp" or module_name.startswith("mcp.")
