#!/usr/bin/env bash
# Build the relocated virtualenv the packages ship as /opt/aiwm-agentd.
#
#   packaging/build-venv.sh STAGE
#
# STAGE/opt/aiwm-agentd is created with $PYTHON (default /usr/bin/python3, the target distro's
# interpreter), filled with this project's wheel and its pinned dependencies, and relocated: no path of
# the build machine is left in shebangs, pyvenv.cfg, activate scripts, RECORD or .pyc files (checked at
# the end). Dependency versions are pinned to the dev virtualenv's (`.venv`), which the tests ran with, or
# to $CONSTRAINTS (a `pip freeze` file: build-debs.sh passes the host's when building inside a release
# root). Pins only constrain: a pinned package the wheel does not require (bcrypt, the dev controller's)
# is not installed, and the build fails if anything of the dev tooling got in (checked below).
set -euo pipefail
stage=${1:?usage: build-venv.sh STAGE}
python=${PYTHON:-/usr/bin/python3}
prefix=/opt/aiwm-agentd
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$stage"
stage=$(cd "$stage" && pwd)
venv=$stage$prefix
work=$stage.work
log() { printf 'build-venv: %s\n' "$*" >&2; }

pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pybin=$(dirname "$python")/python$pyver     # /usr/bin/python3.11: what the venv links to
[ -x "$pybin" ] || { log "$pybin not found"; exit 1; }

rm -rf "$venv" "$work"
mkdir -p "$work/wheels" "$(dirname "$venv")"
log "venv with $pybin ($pyver)"
"$pybin" -m venv "$venv"
vpip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# Our own wheel, then everything pinned to what the dev venv (tested) has.
log "wheel of $repo"
"${vpip[@]}" wheel --no-deps -w "$work/wheels" "$repo" 2>&1 >/dev/null \
  | { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2
if [ -n "${CONSTRAINTS:-}" ]; then
  grep -v '^aiwm-agentd' "$CONSTRAINTS" >"$work/constraints.txt" || true
elif [ -x "$repo/.venv/bin/pip" ]; then
  "$repo/.venv/bin/pip" freeze --exclude-editable 2>/dev/null | grep -v '^aiwm-agentd' >"$work/constraints.txt" || true
else
  : >"$work/constraints.txt"
fi
log "installing dependencies"
"${vpip[@]}" install --no-compile -c "$work/constraints.txt" "$work"/wheels/aiwm_agentd-*.whl 2>&1 \
  | { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2
# Not needed at run time: pip/setuptools (nothing is installed into the venv after packaging).
"${vpip[@]}" uninstall -y pip setuptools >/dev/null 2>&1 || true
rm -rf "$venv"/lib/python*/site-packages/{pip,setuptools,_distutils_hack}* "$venv/bin/pip"* "$venv/include"
# Not needed by anything at run time: a VCS control file and PowerShell/csh/fish activate scripts.
find "$venv" -name .gitignore -path '*/site-packages/*' -delete
rm -f "$venv/bin/Activate.ps1" "$venv/bin/activate.csh" "$venv/bin/activate.fish"
# Library modules are imported, never executed: no exec bit (some wheels ship them 0755).
find "$venv/lib" -name '*.py' -perm /111 -exec chmod a-x {} +
# An installed-from-file marker naming the build directory.
find "$venv" -path '*.dist-info/direct_url.json' -delete
find "$venv" -name RECORD -path '*.dist-info/*' -exec sed -i '/direct_url\.json,/d' {} +

# The dev tooling never ships: not the dev controller (aiwm_devtools, or its old home
# aiwm_agentd/devcontroller.py), not its bcrypt dependency.
site=$(echo "$venv"/lib/python*/site-packages)
devtools=$(cd "$site" && ls -d aiwm_devtools aiwm_devtools-* bcrypt bcrypt-* aiwm_agentd/devcontroller.py 2>/dev/null || true)
if [ -n "$devtools" ]; then
  log "dev tooling in the package venv (must not ship): $(echo $devtools)"; exit 1
fi

log "relocating $venv -> $prefix"
# Interpreter links: the versioned system binary, so the venv keeps working whatever /usr/bin/python3 is.
for link in python python3 "python$pyver"; do ln -sfn "$pybin" "$venv/bin/$link"; done
# Shebangs and activate scripts.
grep -rlIF "$venv" "$venv/bin" | while read -r f; do sed -i "s|$venv|$prefix|g" "$f"; done
cat >"$venv/pyvenv.cfg" <<CFG
home = $(dirname "$pybin")
include-system-site-packages = false
version = $("$pybin" -c 'import platform; print(platform.python_version())')
executable = $pybin
command = $pybin -m venv $prefix
CFG
# Bytecode compiled once, recording the installed paths (-s/-p) and hash-checked, so neither the
# read-only /opt nor file mtimes matter and the daemon never compiles at start.
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode checked-hash -s "$stage" -p / \
  "$venv/lib" >"$work/compileall.log" 2>&1 || log "compileall: $(grep -c Error "$work/compileall.log") files not compilable (data/py2 sources), ignored"

# No build-machine path may remain anywhere (text or binary).
leaks=$(grep -rlaF -e "$stage" -e "$repo" "$venv" || true)
if [ -n "$leaks" ]; then log "build paths left in:"; echo "$leaks" | head -20 >&2; exit 1; fi
# The newest glibc symbol version any bundled ELF object needs (the .deb's libc6 dependency).
find "$venv" -type f \( -name '*.so' -o -name '*.so.*' -o -perm /111 \) -exec objdump -T {} + 2>/dev/null \
  | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1 >"$stage/.glibc-min" || true
[ -s "$stage/.glibc-min" ] || { log "found no glibc symbol versions (objdump from binutils missing?)"; exit 1; }
rm -rf "$work"
echo "$pyver" >"$stage/.python-minor"
log "done: $(du -sh "$venv" | cut -f1)"
