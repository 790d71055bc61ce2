"""The one place the runner imports the Claude Agent SDK.

The import costs ~1 s of CPU and ~35 MiB, so the runner delays it (`ClaudeRunner.import_delay`, cut short by
a message) and then calls `import_sdk()` on its loop thread. Keeping it in one small function lets how and
what is imported change without touching the runner's loop.
"""

from __future__ import annotations


def import_sdk() -> None:
    """Import claude_agent_sdk now; ImportError when it is not installed or broken."""
    import claude_agent_sdk  # noqa: F401  (lazy: ~35 MiB; only when a runner exists)
