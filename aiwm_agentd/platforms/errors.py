"""What a platform worker says when something fails: the configuration error and the one-line exception text.

`ConfigurationError` means the platform rejected our configuration (bad token, missing intent): retrying soon
cannot help, so the worker backs off long and logs it once. `describe` turns any exception into one masked
line: library messages may carry tokens, and these lines go to logs, `/health` and chat replies.
"""

from __future__ import annotations

from aiwm_agentd import logs


class ConfigurationError(Exception):
    """The platform refused our configuration; retrying soon cannot help. The message is safe to log."""


def describe(exc: BaseException) -> str:
    """An exception as one masked line (library messages may carry tokens)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return logs.mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
