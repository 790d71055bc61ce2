"""Import python-telegram-bot without the optional extras it loads just because they are installed.

Why: `import telegram` tries `cryptography` (only for Telegram Passport decryption: `Bot(private_key=...)`,
which the daemon never passes) and, through httpx, `httpx._main` (httpx's command-line client: click and
pygments). Both are installed in the venv as dependencies of other packages, so PTB and httpx load them
although the daemon never runs them: ~8 MiB and ~1.5 MiB of idle RSS (benchmarks/bench_imports.py).

Each library already handles the extra being absent (PTB sets CRYPTO_INSTALLED = False and raises only if a
private key is given; httpx replaces its `main` with a stub that says the CLI extra is missing), so refusing
those imports while the library imports changes nothing the daemon uses. The refusal is for the importing
thread only, for the duration of the import, and only for modules not already loaded: another thread (the
runner importing the SDK, say) that needs `cryptography` gets it as usual, and so does anything later.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

log = logging.getLogger(__name__)

# Optional extras that python-telegram-bot (and httpx under it) import when present and we never use.
TELEGRAM_EXTRAS = ("cryptography", "httpx._main")


class _Refuse(importlib.abc.MetaPathFinder):
    """Makes `import <name>` (and its submodules) fail with ImportError in one thread."""

    def __init__(self, names: Sequence[str], thread: int) -> None:
        self.names, self.thread = tuple(names), thread

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if threading.get_ident() == self.thread and any(
                fullname == name or fullname.startswith(name + ".") for name in self.names):
            raise ImportError(f"{fullname} left out on purpose (aiwm_agentd.optional_imports)", name=fullname)
        return None


@contextlib.contextmanager
def refused(names: Sequence[str]) -> Iterator[None]:
    """Within the block, this thread's imports of `names` (not yet loaded) raise ImportError."""
    finder = _Refuse([name for name in names if name not in sys.modules], threading.get_ident())
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_telegram() -> None:
    """Import `telegram` and `telegram.ext` without their unused optional extras (no-op once imported)."""
    if "telegram.ext" in sys.modules:
        return
    before = set(sys.modules)
    try:
        with refused(TELEGRAM_EXTRAS):
            importlib.import_module("telegram")
            importlib.import_module("telegram.ext")
    except ImportError as exc:  # a newer version needs an extra after all: import it whole, say so
        for name in set(sys.modules) - before:
            if name.split(".")[0] in ("telegram", "httpx"):
                del sys.modules[name]
        log.warning("python-telegram-bot does not import without %s (%s); importing it whole",
                    "/".join(TELEGRAM_EXTRAS), exc)
        importlib.import_module("telegram")
        importlib.import_module("telegram.ext")
