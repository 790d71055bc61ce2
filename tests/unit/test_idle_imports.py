"""What the idle daemon leaves unimported: `requests` until the first controller call, PTB's unused extras.

The module checks run in fresh interpreters (this test process has imported everything long ago).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from aiwm_agentd.optional_imports import refused

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, path: Path | None = None) -> tuple[dict[str, Any], str]:
    """Run `code` in a fresh interpreter; returns the JSON of its last stdout line and its whole stdout."""
    python_path = f"{path}:{ROOT}" if path else str(ROOT)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": python_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stdout


def test_requests_is_imported_by_the_first_controller_call_not_by_the_daemon() -> None:
    report, _ = run_python("""
        import json, socket, sys, time
        import aiwm_agentd.cli, aiwm_agentd.logs, aiwm_agentd.supervisor, aiwm_agentd.platforms.telegram_worker
        from aiwm_agentd.controller.client import ControllerClient, ControllerError
        HTTP = ("requests", "urllib3")
        loaded = lambda: sorted(m for m in sys.modules if m.split(".")[0] in HTTP)
        client = ControllerClient("http://127.0.0.1:9", "agent", "secret", timeout=2.0,
                                  proxies={"http": "http://127.0.0.1:8"}, no_proxy="127.0.0.1")
        client.abort()  # nothing in flight: nothing to cut, nothing to import
        idle = loaded()
        try:
            client.connect(time.monotonic() + 2.0)  # the discard port: connection refused
        except ControllerError as exc:
            kind = exc.kind
        print(json.dumps({"idle": idle, "after": bool(loaded()), "kind": kind, "proxies": client._proxies,
                          "agent": client.session.headers["User-Agent"]}))
        client.close()
    """)
    assert report["idle"] == []
    assert report["after"] is True and report["kind"] == "network"
    assert report["proxies"] == {}  # no_proxy still bypasses the proxy for the controller
    assert report["agent"].startswith("aiwm-agentd/")


def test_telegram_imports_without_cryptography_and_httpx_cli() -> None:
    report, _ = run_python("""
        import json, sys
        from aiwm_agentd.optional_imports import import_telegram
        import_telegram()
        import telegram, telegram.ext
        bot = telegram.Bot("616161:token-for-a-test")
        builder = telegram.ext.ApplicationBuilder().token("616161:token-for-a-test")
        top = {m.split(".")[0] for m in sys.modules}
        print(json.dumps({"left_out": sorted(top & {"cryptography", "click", "pygments", "bcrypt"}),
                          "bot": type(bot).__name__, "builder": type(builder).__name__,
                          "meta_path_clean": not any(type(f).__name__ == "_Refuse" for f in sys.meta_path)}))
    """)
    assert report == {"left_out": [], "bot": "Bot", "builder": "ApplicationBuilder", "meta_path_clean": True}


def test_a_refused_import_fails_only_in_the_refusing_thread_and_only_inside_the_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lean_probe_extra.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    other: list[object] = []
    with refused(["lean_probe_extra"]):
        with pytest.raises(ImportError, match="left out on purpose"):
            importlib.import_module("lean_probe_extra")
        worker = threading.Thread(target=lambda: other.append(importlib.import_module("lean_probe_extra").VALUE))
        worker.start()
        worker.join(10)
    assert other == [7]  # another thread (the runner importing the SDK, say) gets the module as usual
    assert importlib.import_module("lean_probe_extra").VALUE == 7
    monkeypatch.delitem(sys.modules, "lean_probe_extra")


def test_a_telegram_that_needs_the_extra_is_imported_whole_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "telegram").mkdir()
    (tmp_path / "telegram" / "__init__.py").write_text("import cryptography  # a hard dependency now\n")
    (tmp_path / "telegram" / "ext.py").write_text("")
    report, out = run_python("""
        import json, logging, sys
        logging.basicConfig(format="LOG %(levelname)s %(message)s", stream=sys.stdout)
        from aiwm_agentd.optional_imports import import_telegram
        import_telegram()
        print(json.dumps({"telegram": sys.modules["telegram"].__file__, "crypto": "cryptography" in sys.modules}))
    """, tmp_path)
    assert report == {"telegram": str(tmp_path / "telegram" / "__init__.py"), "crypto": True}
    assert "LOG WARNING python-telegram-bot does not import without cryptography/httpx._main" in out
