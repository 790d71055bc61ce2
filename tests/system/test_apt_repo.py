"""Install and upgrade the way fleets do (issue 13): the signed apt repository, on every supported release.

For each release of packaging/releases (Debian 12 bookworm, Debian 13 trixie) a container of that release is
booted, the repository `make repo` builds (packaging/build-repo.sh, reprepro) is served from the container's
own loopback, and the operator's README lines add it (keyring in /etc/apt/keyrings, a deb822 .sources file).
Then, in order: `apt-get install aiwm-agentd`; the agent in local mode, then against the dev controller; a
newer version published in a repository signed with another key is refused; the newer version published
properly arrives with `apt-get upgrade` (no prompt: stdin is /dev/null, no DEBIAN_FRONTEND), keeping the env
file and restarting the running agent, which comes back healthy and connected.

The containers have no network: the Debian archive's sources are moved aside (every dependency of the
package is already in the root), so only the test repository is there to update from.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CONNECTED,
    NO_DEVTOOLS_CHECK,
    NO_DEVTOOLS_EXPECTED,
    RELEASES,
    REPO,
    Container,
    booted,
    install_dev_controller,
    record,
    release_root,
    run,
    stage_of,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

AGENT_ID = "5f0c0ffee0ddba11ab1e0002"
SECRET = "systest-secret-fedcba9876543210"
CONTROLLER_PORT = 3306
REPO_PORT = 8080
REPO_URL = f"http://127.0.0.1:{REPO_PORT}/"
UNIT = "aiwm-agentd.service"
VENV = "/opt/aiwm-agentd"
BUILD_REPO = str(REPO / "packaging/build-repo.sh")

GOOD_ENV = f"""# written by tests/system/test_apt_repo.py
AIWM_ENABLED=true
AIWM_BASE_URL=http://127.0.0.1:{CONTROLLER_PORT}
AIWM_AGENT_ID={AGENT_ID}
AIWM_AGENT_SECRET={SECRET}
AIWM_HEARTBEAT_INTERVAL=1
LOG_LEVEL=DEBUG
"""

# The README's lines, with the keyring fetched by python3 (a minbase root has no curl).
ADD_REPOSITORY = f"""set -e
install -d -m 0755 /etc/apt/keyrings
python3 -c 'import urllib.request as u; u.urlretrieve("{REPO_URL}aiwm-agentd-archive-keyring.gpg", \
"/etc/apt/keyrings/aiwm-agentd.gpg")'
printf 'Types: deb\\nURIs: %s\\nSuites: %s\\nComponents: main\\nSigned-By: /etc/apt/keyrings/aiwm-agentd.gpg\\n' \
  {REPO_URL} "$(. /etc/os-release && echo "$VERSION_CODENAME")" >/etc/apt/sources.list.d/aiwm-agentd.sources
apt-get update
"""


def repo_env(gnupghome: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AIWM_REPO_KEY", "GNUPGHOME")}
    return dict(env, AIWM_REPO_GNUPGHOME=str(gnupghome))


@pytest.fixture(scope="session")
def repos(packages: dict[str, Any]) -> Iterator[dict[str, Path]]:
    """Three repositories built by packaging/build-repo.sh from the same .debs:
    v1 (the `make debs` packages, release 1), v2 (v1 plus a newer release 2 of each, same key) and
    otherkey (the newer packages, signed with a different key)."""
    tmp = Path(tempfile.mkdtemp(prefix="aiwm-systest-repo-", dir="/var/tmp"))
    try:
        started = time.monotonic()
        newer = []
        for codename, suffix in RELEASES.items():
            env = dict(os.environ, AIWM_PKG_RELEASE="2", AIWM_DEB_SUFFIX=suffix, AIWM_DEB_CODENAME=codename,
                       STAGE=str(stage_of(codename)), DIST=str(tmp / "dist2"), DEB_COMPRESSION="zstd")
            run([str(REPO / "packaging/build-packages.sh"), "deb"], cwd=REPO, env=env, timeout=600)
            newer.append(next((tmp / "dist2").glob(f"aiwm-agentd_*-2{suffix}_amd64.deb")))
        record("newer_debs_build_seconds", time.monotonic() - started)

        started = time.monotonic()
        good = repo_env(tmp / "gnupg-good")
        run([BUILD_REPO, "init", str(tmp / "v1")], env=good, cwd=REPO)
        run([BUILD_REPO, "add", str(tmp / "v1"), *map(str, packages["debs"].values())], env=good, cwd=REPO,
            timeout=300)
        record("repo_build_seconds", time.monotonic() - started)
        for part in ("", ".state"):
            run(["cp", "-a", f"{tmp}/v1{part}", f"{tmp}/v2{part}"], timeout=300)
        run([BUILD_REPO, "add", str(tmp / "v2"), *map(str, newer)], env=good, cwd=REPO, timeout=300)
        other = repo_env(tmp / "gnupg-other")
        run([BUILD_REPO, "init", str(tmp / "otherkey")], env=other, cwd=REPO)
        run([BUILD_REPO, "add", str(tmp / "otherkey"), *map(str, newer)], env=other, cwd=REPO, timeout=300)
        yield {"v1": tmp / "v1", "v2": tmp / "v2", "otherkey": tmp / "otherkey"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_make_repo_is_signed_with_one_suite_per_release(packages: dict[str, Any], tmp_path: Path) -> None:
    """`make repo`: dist/repo with InRelease/Release.gpg per suite, verifiable with the exported key, each
    suite holding its release's package; the .debs carry none of the dev tooling."""
    for codename, deb in packages["debs"].items():
        contents = run(["dpkg-deb", "-c", str(deb)]).stdout
        assert not re.search(r"aiwm_devtools|/bcrypt|aiwm_agentd/devcontroller\.py", contents), codename
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "AIWM_REPO_KEY"}
    run(["make", "-s", "-C", str(REPO), "repo"], env=env, timeout=900)
    record("make_repo_seconds", time.monotonic() - started)
    dist = REPO / "dist/repo"
    keyring = dist / "aiwm-agentd-archive-keyring.gpg"
    assert keyring.is_file() and (dist / "aiwm-agentd-archive-keyring.asc").is_file()
    assert not (dist / "conf").exists() and not (dist / "db").exists()  # reprepro's state is not published
    for codename, suffix in RELEASES.items():
        suite = dist / "dists" / codename
        for name in ("InRelease", "Release", "Release.gpg"):
            assert (suite / name).is_file(), suite / name
        run(["gpgv", "--keyring", str(keyring), str(suite / "InRelease")])
        run(["gpgv", "--keyring", str(keyring), str(suite / "Release.gpg"), str(suite / "Release")])
        release = (suite / "Release").read_text()
        assert f"Codename: {codename}" in release and "Components: main" in release, release
        packages_index = (suite / "main/binary-amd64/Packages").read_text()
        versions = re.findall(r"^Version: (.*)$", packages_index, re.M)
        assert versions == [f"{packages['version']}-1{suffix}"], (codename, versions)
        filename = re.search(r"^Filename: (.*)$", packages_index, re.M).group(1)  # type: ignore[union-attr]
        assert (dist / filename).is_file()
    # Signed with another key, it does not verify: what apt relies on.
    other = repo_env(tmp_path / "gnupg")
    run([BUILD_REPO, "init", str(tmp_path / "r")], env=other)
    bad = subprocess.run(["gpgv", "--keyring", str(keyring), str(tmp_path / "r/dists/trixie/InRelease")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "No public key" in bad.stderr, bad.stderr
    # A real key that is not there: one clear line, no repository.
    missing = run([BUILD_REPO, "init", str(tmp_path / "r2")], check=False,
                  env=dict(os.environ, AIWM_REPO_KEY="0123456789ABCDEF", GNUPGHOME=str(tmp_path / "gnupg")))
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"build-repo: AIWM_REPO_KEY=0123456789ABCDEF: no such secret key in GNUPGHOME={tmp_path / 'gnupg'}"]


# ------------------------------------------------------------------------------- one container per release


@pytest.fixture(scope="module", params=sorted(RELEASES))
def box(request: pytest.FixtureRequest, host_tools: None) -> Iterator[Container]:
    codename = request.param
    with booted(release_root(codename), codename) as container:
        container.state["release"] = codename
        yield container


def publish(box: Container, name: str, tree: Path) -> None:
    """Serve `tree` (a repository) at REPO_URL: hard-linked into the container, behind a symlink."""
    dest = box.root / "srv/repos" / name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-al", str(tree), str(dest)], timeout=120)
    box.sh(f"ln -sfn /srv/repos/{name} /srv/aiwm-repo.new && mv -T /srv/aiwm-repo.new /srv/aiwm-repo")


def count(entries: list[dict[str, Any]], pattern: str) -> int:
    rx = re.compile(pattern, re.I)
    return sum(1 for e in entries if rx.search(e["MESSAGE"]))


def cursor(box: Container) -> str:
    entries = box.journal(UNIT)
    return entries[-1]["__CURSOR"] if entries else ""


def healthy(box: Container) -> bool:
    return box.sh("aiwm-agentd status", check=False).returncode == 0


def test_add_repository_and_install(box: Container, repos: dict[str, Path], packages: dict[str, Any]) -> None:
    codename = box.state["release"]
    box.sh("mkdir -p /root/debian-sources-off && for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do "
           "[ -e \"$f\" ] && mv \"$f\" /root/debian-sources-off/; done; true")
    publish(box, "v1", repos["v1"])
    box.sh(f"systemd-run --unit=aiwm-repo-http /usr/bin/python3 -m http.server {REPO_PORT} --bind 127.0.0.1 "
           "--directory /srv/aiwm-repo")
    box.wait_for("the repository served", lambda: box.sh(
        f"python3 -c 'import urllib.request as u; u.urlopen(\"{REPO_URL}dists/{codename}/InRelease\")'",
        check=False).returncode == 0)
    box.sh(ADD_REPOSITORY, timeout=120)
    assert box.out("cat /etc/apt/sources.list.d/aiwm-agentd.sources").splitlines()[2] == f"Suites: {codename}"

    started = time.monotonic()
    proc = box.sh("apt-get install -y aiwm-agentd", timeout=600)
    record(f"apt_install_seconds[{codename}]", time.monotonic() - started)
    assert "not started" in proc.stdout + proc.stderr  # the example env file is not configured
    version = f"{packages['version']}-1{RELEASES[codename]}"
    assert box.out("dpkg-query -W -f='${Version}' aiwm-agentd") == version
    # Built for this release: the venv runs on the container's own python3.X.
    pyminor = box.out("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    assert box.out(f"readlink {VENV}/bin/python3") == f"/usr/bin/python{pyminor}"
    assert box.out("aiwm-agentd --version") == f"aiwm-agentd {packages['version']}"
    assert box.out(NO_DEVTOOLS_CHECK, check=False) == NO_DEVTOOLS_EXPECTED
    assert box.out(f"systemctl is-enabled {UNIT}") == "enabled"
    assert box.out(f"systemctl is-active {UNIT}", check=False) == "inactive"


def test_local_mode(box: Container) -> None:
    box.write("/etc/aiwm/agent.env", "AIWM_ENABLED=false\nLOG_LEVEL=DEBUG\n", mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl start {UNIT}", timeout=120)
    box.wait_for("healthy in local mode", lambda: healthy(box), timeout=30)
    status = box.out("aiwm-agentd status")
    assert "healthy" in status and "(local mode)" in status, status


def test_against_the_dev_controller(box: Container) -> None:
    install_dev_controller(box, CONTROLLER_PORT, AGENT_ID, SECRET)
    box.write("/etc/aiwm/agent.env", GOOD_ENV, mode="0640", owner="root:aiwm-agentd")
    mark = cursor(box)
    box.sh(f"systemctl restart {UNIT}", timeout=120)
    box.wait_for("connected and two heartbeats", lambda: (
        count(box.journal(UNIT, mark), CONNECTED) >= 1
        and count(box.journal(UNIT, mark), r"heartbeat") >= 2), timeout=60)
    box.wait_for("healthy", lambda: healthy(box), timeout=30)
    assert f"http://127.0.0.1:{CONTROLLER_PORT}" in box.out("aiwm-agentd status")


def test_a_repository_signed_with_another_key_is_refused(box: Container, packages: dict[str, Any],
                                                          repos: dict[str, Path]) -> None:
    codename = box.state["release"]
    publish(box, "otherkey", repos["otherkey"])
    # apt keeps the previous (verified) index and says why; --error-on=any makes that an exit status too.
    proc = box.sh("apt-get update --error-on=any", check=False, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert re.search(r"NO_PUBKEY|not signed|couldn't be verified|Missing key", output), output
    assert "The repository is not updated" in box.out("apt-get update 2>&1", timeout=120)
    policy = box.out("apt-cache policy aiwm-agentd")
    assert re.search(rf"Candidate: {re.escape(packages['version'])}-1{RELEASES[codename]}$", policy, re.M), policy
    assert "aiwm-agentd" not in box.out("apt-get upgrade -s | grep ^Inst || true")


def test_apt_upgrade_keeps_the_env_file_and_restarts_the_agent(box: Container, packages: dict[str, Any],
                                                                repos: dict[str, Path]) -> None:
    codename = box.state["release"]
    edited = GOOD_ENV + "# edited by the operator\n"
    box.write("/etc/aiwm/agent.env", edited, mode="0640", owner="root:aiwm-agentd")
    box.sh(f"systemctl restart {UNIT}", timeout=120)
    box.wait_for("healthy", lambda: healthy(box), timeout=30)
    pid_before = box.show(UNIT, "MainPID")["MainPID"]
    listing = box.out("ls /etc/aiwm")
    mark = cursor(box)

    publish(box, "v2", repos["v2"])
    box.sh("apt-get update", timeout=120)
    started = time.monotonic()
    # No DEBIAN_FRONTEND, no --force-conf*, stdin /dev/null: any prompt would fail the upgrade.
    proc = box.sh("apt-get upgrade -y", timeout=600)
    record(f"apt_upgrade_seconds[{codename}]", time.monotonic() - started)
    output = proc.stdout + proc.stderr
    assert "Configuration file" not in output, output
    assert box.out("dpkg-query -W -f='${Version}' aiwm-agentd") == f"{packages['version']}-2{RELEASES[codename]}"
    assert box.out("sha256sum < /etc/aiwm/agent.env | cut -d' ' -f1") == hashlib.sha256(edited.encode()).hexdigest()
    assert box.out("stat -c '%U:%G %a' /etc/aiwm/agent.env") == "root:aiwm-agentd 640"
    assert box.out("ls /etc/aiwm") == listing
    box.wait_for("active again", lambda: box.out(f"systemctl is-active {UNIT}", check=False) == "active")
    assert box.show(UNIT, "MainPID")["MainPID"] not in ("0", pid_before)  # restarted by the upgrade
    box.wait_for("reconnected", lambda: count(box.journal(UNIT, mark), CONNECTED) >= 1,
                 timeout=60)
    box.wait_for("healthy after the upgrade", lambda: healthy(box), timeout=30)
