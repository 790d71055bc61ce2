"""Fixtures for `make test-system`: real systemd in debootstrapped Debian roots, booted with systemd-nspawn.

One minbase root per supported release (packaging/releases: Debian 12 bookworm, Debian 13 trixie) is made by
packaging/release-root.sh (~90 s) and cached under /var/cache/aiwm-agentd-test/, keyed by date: reruns on the
same day only copy it (~3 s); older roots are deleted. Each container boots a private copy with
`systemd-nspawn -b --register=no --keep-unit --console=pipe --private-network` (its own loopback, nothing
reachable outside) and runs commands in it with `nsenter -t <container init> -a`. Teardown always powers the
container off, kills whatever is left, removes the copy, the cgroups nspawn created and its /run/systemd/nspawn
bookkeeping, and checks that no mount leaked.

The dev controller is not in the packages (aiwm_devtools, with its bcrypt, stays in the repository): the tests
copy aiwm_devtools and the host .venv's bcrypt (an abi3 wheel: any python3 >= 3.9) into the container and run
it there with the container's own /usr/bin/python3 as a unit (`install_dev_controller`), on the container's
loopback, where the agent reaches it.

Needs root and the tools from tests/system/install-deps.sh (run automatically; idempotent).
Knobs: AIWM_SYSTEST_CACHE (cache dir), AIWM_SYSTEST_MIRROR (Debian mirror for debootstrap).
Figures (sizes, timings, exposure) are written to build/system-test-figures.json and printed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("AIWM_SYSTEST_CACHE", "/var/cache/aiwm-agentd-test"))
MIRROR = os.environ.get("AIWM_SYSTEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"  # test_systemd.py's release (the dpkg -i lifecycle); test_apt_repo.py runs every release
RELEASES: dict[str, str] = {  # codename -> Debian revision suffix, from packaging/releases
    fields[0]: fields[1]
    for fields in (line.split() for line in (REPO / "packaging/releases").read_text().splitlines())
    if fields and not fields[0].startswith("#")
}
# The package set plus procps: the package depends on it (/bin/kill for ExecReload) and the
# container has no network to fetch it.
INCLUDE = "systemd,systemd-sysv,dbus,python3,procps"
FIGURES_FILE = REPO / "build" / "system-test-figures.json"
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}
CGROUP_ROOTS = (Path("/sys/fs/cgroup"),)
NSPAWN_RUN = Path("/run/systemd/nspawn")

FIGURES: dict[str, Any] = {}


def record(name: str, value: Any) -> None:
    """Keep a measured figure for the report (never asserted on: machines differ). The file keeps the
    latest value of every figure, so a partial run (-k) updates only what it measured."""
    FIGURES[name] = round(value, 3) if isinstance(value, float) else value
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        saved = json.loads(FIGURES_FILE.read_text())
    except (OSError, ValueError):
        saved = {}
    saved.update(FIGURES)
    FIGURES_FILE.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("aiwm-agentd system test figures")
        for key, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{key}: {value}")
        terminalreporter.write_line(f"(also in {FIGURES_FILE.relative_to(REPO)})")


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


# ----------------------------------------------------------------------------------------- host side


@pytest.fixture(scope="session")
def host_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the system test boots a container: run it as root (make test-system)")
    run([str(REPO / "tests/system/install-deps.sh")], timeout=900)


@pytest.fixture(scope="session")
def packages(host_tools: None) -> dict[str, Any]:
    """The .debs (one per release) and the .rpm `make debs rpm` builds (a no-op when they are up to date)."""
    started = time.monotonic()
    run(["make", "-s", "-C", str(REPO), "debs", "rpm"], timeout=2400)
    record("make_debs_rpm_seconds_incremental", time.monotonic() - started)
    version = run([str(REPO / ".venv/bin/python"), "-c", "import aiwm_agentd; print(aiwm_agentd.__version__)"],
                  cwd=REPO).stdout.strip()
    debs = {codename: REPO / "dist" / f"aiwm-agentd_{version}-1{suffix}_amd64.deb"
            for codename, suffix in RELEASES.items()}
    rpm = REPO / "dist" / f"aiwm-agentd-{version}-1.x86_64.rpm"
    for codename, deb in debs.items():
        assert deb.is_file(), deb
        record(f"deb_bytes[{codename}]", deb.stat().st_size)
    assert rpm.is_file(), rpm
    record("rpm_bytes", rpm.stat().st_size)
    return {"deb": debs[SUITE], "debs": debs, "rpm": rpm, "version": version}


def stage_of(codename: str) -> Path:
    """The venv a release's .deb was built from (packaging.mk): the machine's own release uses build/pkg."""
    host = run(["bash", "-c", ". /etc/os-release && echo $VERSION_CODENAME"]).stdout.strip()
    return REPO / ("build/pkg" if codename == host else f"build/pkg-{codename}")


@pytest.fixture(scope="session")
def newer_deb(packages: dict[str, Any]) -> Iterator[Callable[[str], Path]]:
    """`newer_deb(codename)`: a throw-away release 2 of that release's .deb (the same venv, a higher
    revision, zstd), what an upgrade installs; built once per session and release, deleted at the end."""
    dist = Path(tempfile.mkdtemp(prefix="aiwm-systest-dist-", dir="/var/tmp"))
    built: dict[str, Path] = {}

    def build(codename: str) -> Path:
        if codename not in built:
            started = time.monotonic()
            env = dict(os.environ, AIWM_PKG_RELEASE="2", AIWM_DEB_SUFFIX=RELEASES[codename],
                       AIWM_DEB_CODENAME=codename, STAGE=str(stage_of(codename)), DIST=str(dist / codename),
                       DEB_COMPRESSION="zstd")
            run([str(REPO / "packaging/build-packages.sh"), "deb"], cwd=REPO, env=env, timeout=600)
            built[codename] = next((dist / codename).glob(f"aiwm-agentd_*-2{RELEASES[codename]}_amd64.deb"))
            record(f"newer_deb_build_seconds[{codename}]", time.monotonic() - started)
        return built[codename]

    try:
        yield build
    finally:
        shutil.rmtree(dist, ignore_errors=True)


def release_root(codename: str) -> Path:
    """A pristine minbase root of that release (packaging/release-root.sh: debootstrapped once a day)."""
    started = time.monotonic()
    proc = run([str(REPO / "packaging/release-root.sh"), codename, "minbase", INCLUDE], timeout=900)
    if "ready in" in proc.stderr:
        record(f"debootstrap_seconds[{codename}]", time.monotonic() - started)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def rootfs(host_tools: None) -> Path:
    return release_root(SUITE)


# -------------------------------------------------------------------------------------- the container


def _cgroup_dirs() -> set[Path]:
    found: set[Path] = set()
    for root in CGROUP_ROOTS:
        for dirpath, _dirs, _files in os.walk(root):
            found.add(Path(dirpath))
    return found


def _mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def _tree(path: Path) -> set[Path]:
    if not path.exists():
        return set()
    return {Path(d) / n for d, dirs, files in os.walk(path) for n in dirs + files} | {path}


def _status_field(pid: int, name: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


class Container:
    """One booted systemd-nspawn container; `sh()` runs a bash script inside it as root."""

    def __init__(self, root: Path, log: Path, name: str) -> None:
        self.root, self.log, self.name = root, log, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.state: dict[str, Any] = {}
        self._cgroups_before = _cgroup_dirs()
        self._nspawn_run_before = _tree(NSPAWN_RUN)
        self._mounts_before = _mounts()

    # ---- lifecycle

    def boot(self, timeout: float = 90) -> float:
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit",
                 "--console=pipe", "--private-network", "-M", self.name],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = started + timeout
        while not self.pid:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no container init after {timeout} s:\n{self.log_tail()}")
            self.pid = self._find_init()
            time.sleep(0.05)
        while True:
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"container state {state!r} after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)
        if state == "degraded":
            failed = self.sh("systemctl --failed --no-legend --plain", check=False).stdout
            print(f"container degraded; failed units:\n{failed}")
        return time.monotonic() - started

    def _find_init(self) -> int:
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if _status_field(pid, "PPid") == str(self.proc.pid) and _status_field(pid, "NSpid").split()[-1:] == ["1"]:
                return pid
        return 0

    def poweroff(self, timeout: float = 30) -> None:
        """Halt the container (nspawn turns SIGTERM into a clean poweroff), then make sure it is gone."""
        proc, self.pid = self.proc, 0
        self.proc = None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._reap_cgroups()

    def _reap_cgroups(self) -> None:
        """Kill anything left in the cgroups nspawn made and remove them, deepest first."""
        new = sorted(_cgroup_dirs() - self._cgroups_before, key=lambda p: len(p.parts), reverse=True)
        for _attempt in range(50):
            leftover = False
            for cg in new:
                procs = cg / "cgroup.procs"
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        leftover = True
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            if not leftover:
                break
            time.sleep(0.1)
        for cg in new:
            with contextlib.suppress(OSError):
                cg.rmdir()

    def cleanup(self) -> list[str]:
        """Everything teardown must leave as it found it; returns what could not be restored."""
        self.poweroff()
        problems = []
        for path in sorted(_tree(NSPAWN_RUN) - self._nspawn_run_before, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        left = _cgroup_dirs() - self._cgroups_before
        left = {p for p in left if "process_api" not in str(p)}  # the host harness's own, unrelated
        if left:
            problems.append(f"cgroups left: {sorted(map(str, left))}")
        leaked = _mounts() - self._mounts_before
        for mount in sorted(leaked, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
            problems.append(f"mount leaked (unmounted): {mount}")
        return problems

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    # ---- commands

    def sh(self, script: str, check: bool = True, timeout: float = 60, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
        assert self.pid, "container not running"
        env = [f"{k}={v}" for k, v in CONTAINER_ENV.items()]
        cmd = ["nsenter", "-t", str(self.pid), "-a", "--", "env", "-i", *env, "bash", "-c", script]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"in container: {script!r} exited {proc.returncode}\nstdout:\n"
                                 f"{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    def out(self, script: str, **kw: Any) -> str:
        return self.sh(script, **kw).stdout.strip()

    def write(self, path: str, text: str, mode: str = "0644", owner: str = "root:root") -> None:
        self.sh(f"mkdir -p \"$(dirname {path})\" && cat > {path} && chown {owner} {path} && chmod {mode} {path}",
                input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = " ".join(f"-p {p}" for p in props)
        lines = self.out(f"systemctl show {unit} {args}").splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def journal(self, unit: str, since_cursor: str = "") -> list[dict[str, Any]]:
        after = f"--after-cursor='{since_cursor}'" if since_cursor else ""
        text = self.out(f"journalctl -u {unit} -o json --no-pager {after}")
        entries = []
        for line in text.splitlines():
            entry = json.loads(line)
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):  # non-UTF-8 bytes
                entry["MESSAGE"] = bytes(message).decode("utf-8", "replace")
            entries.append(entry)
        return entries

    def wait_for(self, what: str, predicate: Any, timeout: float = 30, interval: float = 0.25) -> Any:
        return harness.wait_for(predicate, timeout, interval, what=what)


@contextlib.contextmanager
def booted(rootfs: Path, label: str) -> Iterator[Container]:
    """A container booted from a private copy of `rootfs`, cleaned up (and checked) whatever happens."""
    scratch = Path(tempfile.mkdtemp(prefix="aiwm-systest-", dir="/var/tmp"))
    root = scratch / "root"
    box = Container(root, scratch / "nspawn.log", f"aiwmtest{os.getpid()}")
    try:
        run(["cp", "-a", "--reflink=auto", str(rootfs), str(root)], timeout=300)
        record(f"container_boot_seconds[{label}]", box.boot())
        yield box
    finally:
        problems = box.cleanup()
        log = box.log_tail(200)
        shutil.rmtree(scratch, ignore_errors=True)
        if problems:
            print("nspawn log tail:\n" + log)
            pytest.fail("teardown: " + "; ".join(problems))


@pytest.fixture(scope="module")
def container(rootfs: Path) -> Iterator[Container]:
    with booted(rootfs, SUITE) as box:
        yield box


# ------------------------------------------------------------------------------------- dev controller

DEVTOOLS = "/opt/aiwm-systest/devtools"


def install_dev_controller(box: Container, port: int, agent_id: str, secret: str) -> None:
    """Run the dev controller (python -m aiwm_devtools, from this repository) in the container as the unit
    aiwm-devctl.service, with the container's python3 and the host .venv's bcrypt, on the container's
    loopback port `port`; returns once it accepts connections."""
    import bcrypt  # the host .venv's (the dev/test extra); abi3, so any container python3 >= 3.9 loads it

    dest = box.root / DEVTOOLS.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "aiwm_devtools", dest / "aiwm_devtools", ignore=ignore)
    shutil.copytree(Path(bcrypt.__file__).parent, dest / "bcrypt", ignore=ignore)
    run(["chmod", "-R", "a+rX", str(box.root / "opt/aiwm-systest")])
    box.write("/etc/systemd/system/aiwm-devctl.service", f"""[Unit]
Description=AIWM dev controller (system test)
Before=aiwm-agentd.service

[Service]
Environment=PYTHONPATH={DEVTOOLS} PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m aiwm_devtools --port {port} --agent-id {agent_id} --secret {secret} --wire-version v5
DynamicUser=yes

[Install]
WantedBy=multi-user.target
""")
    box.sh("systemctl daemon-reload && systemctl enable --now aiwm-devctl.service")
    wait_listening(box, port)


def wait_listening(box: Container, port: int) -> None:
    box.wait_for(f"a listener on 127.0.0.1:{port}", lambda: box.sh(
        f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'",
        check=False).returncode == 0)


# The daemon's line once the controller accepted it (aiwm_agentd/controller/session.py), e.g.
# "start: connected as Dev Agent (controller v5, token valid for 3600 s)". The agents here know one
# controller only, the dev controller on the container's loopback.
CONNECTED = r"connected as .+ \(controller v\d"


# Nothing of the dev tooling may be in an installed package (the build refuses it too: build-venv.sh).
NO_DEVTOOLS_CHECK = (
    "find /opt/aiwm-agentd \\( -name 'aiwm_devtools*' -o -name 'bcrypt*' -o -path '*/aiwm_agentd/devcontroller.py' \\)"
    " -print; /opt/aiwm-agentd/bin/python -c 'import bcrypt' 2>&1 | tail -n 1;"
    " /opt/aiwm-agentd/bin/python -c 'import aiwm_devtools' 2>&1 | tail -n 1"
)
NO_DEVTOOLS_EXPECTED = ("ModuleNotFoundError: No module named 'bcrypt'\n"
                        "ModuleNotFoundError: No module named 'aiwm_devtools'")
