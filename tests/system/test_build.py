"""packaging/build-venv.sh refuses to package the dev tooling (the dev controller left the package: issue 13).

The real builds (`make debs rpm`) are checked on their output by test_apt_repo.py and test_systemd.py; this
shows the build's own guard fails when the tooling does get in: a copy of the sources whose wheel requires
bcrypt and still carries aiwm_agentd/devcontroller.py (a stale setuptools build/ dir would do that).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from .conftest import REPO, run

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


def test_build_venv_fails_when_dev_tooling_gets_in(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "packaging").mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "aiwm_agentd", src / "aiwm_agentd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "packaging/build-venv.sh", src / "packaging/build-venv.sh")
    setup = (src / "setup.cfg").read_text()
    setup, n = re.subn(r"^install_requires =\n", "install_requires =\n    bcrypt>=4.0\n", setup, flags=re.M)
    assert n == 1
    (src / "setup.cfg").write_text(setup)
    (src / "aiwm_agentd/devcontroller.py").write_text("# the old home of the dev controller\n")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(run([str(REPO / ".venv/bin/pip"), "freeze", "--exclude-editable"]).stdout)

    proc = run([str(src / "packaging/build-venv.sh"), str(tmp_path / "stage")], check=False, timeout=540,
               env=dict(os.environ, CONSTRAINTS=str(constraints)))
    assert proc.returncode == 1, proc.stderr[-2000:]
    refused = [line for line in proc.stderr.splitlines() if "must not ship" in line]
    assert len(refused) == 1, proc.stderr[-2000:]
    assert "bcrypt" in refused[0] and "aiwm_agentd/devcontroller.py" in refused[0], refused
    assert not (tmp_path / "stage/.python-minor").exists()
