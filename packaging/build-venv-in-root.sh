#!/usr/bin/env bash
# Build the package venv for another release, with that release's own python, inside a root of it.
#
#   packaging/build-venv-in-root.sh CODENAME STAGE
#
# The root (debootstrap minbase + python3-venv + binutils, cached per day: release-root.sh) runs
# packaging/build-venv.sh under systemd-nspawn (the host's network: pip reaches PyPI) on a copy of this
# working tree's sources; STAGE (e.g. build/pkg-trixie) is bind-mounted as the output, so the host then
# packages it like its own (build-packages.sh). Dependencies are pinned to the host .venv's `pip freeze`,
# exactly as for the host build. Must run as root.
set -euo pipefail
codename=${1:?usage: build-venv-in-root.sh CODENAME STAGE}
stage=${2:?usage: build-venv-in-root.sh CODENAME STAGE}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { printf 'build-venv-in-root: %s\n' "$*" >&2; }
command -v systemd-nspawn >/dev/null || { log "systemd-nspawn missing: run tests/system/install-deps.sh"; exit 1; }
[ -x .venv/bin/pip ] || { log ".venv missing: run make (scripts/bootstrap.sh) first"; exit 1; }

start=$(date +%s)
root=$(packaging/release-root.sh "$codename" build python3,python3-venv,binutils,ca-certificates)
mkdir -p "$stage"
stage=$(cd "$stage" && pwd)
rm -f "$stage/.python-minor"

# The sources the wheel is built from, as they are in this working tree (like the host build).
# (/aiwm-agentd-build: a path no bundled binary contains, for build-venv.sh's check that none is left.)
inner=/aiwm-agentd-build
src=$root$inner/src
rm -rf "${root:?}$inner"
mkdir -p "$src/packaging"
cp -a setup.cfg pyproject.toml README.md "$src/"
[ -f MANIFEST.in ] && cp -a MANIFEST.in "$src/"
tar -C "$repo" --exclude=__pycache__ -cf - aiwm_agentd | tar -C "$src" -xf -
cp -a packaging/build-venv.sh "$src/packaging/"
.venv/bin/pip freeze --exclude-editable 2>/dev/null >"$root$inner/constraints.txt"

# pip inside trusts what the host's pip trusts (the host may sit behind a TLS-inspecting proxy).
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
binds=(--bind="$stage:$inner/stage")
envs=(--setenv=CONSTRAINTS=$inner/constraints.txt --setenv=PYTHON=/usr/bin/python3)
if [ -f "$ca" ]; then
  binds+=(--bind-ro="$ca:$inner/pip-ca.crt")
  envs+=(--setenv=PIP_CERT=$inner/pip-ca.crt)
fi
for var in PIP_INDEX_URL PIP_DEFAULT_TIMEOUT; do
  [ -n "${!var:-}" ] && envs+=(--setenv="$var=${!var}")
done
log "$codename: building the venv in $root"
machine=aiwm-build-$codename
out=$(mktemp)
rc=0
systemd-nspawn -q -D "$root" -M "$machine" --register=no --keep-unit --resolv-conf=copy-host --console=pipe \
  "${binds[@]}" "${envs[@]}" -- /bin/bash $inner/src/packaging/build-venv.sh $inner/stage </dev/null >"$out" 2>&1 \
  || rc=$?
# (nspawn's own complaint about its bind-mount bookkeeping is noise: the directory is removed below.)
grep -v '^Attempted to remove disk file system under "/run/systemd/nspawn/propagate/' "$out" >&2 || true
rm -f "$out"
rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
rm -rf "${root:?}$inner"
[ "$rc" -eq 0 ] || { log "$codename: build-venv.sh failed in the $codename root (exit $rc)"; exit 1; }
[ -s "$stage/.python-minor" ] || { log "$codename: no venv came out of the build"; exit 1; }
log "$codename: python $(cat "$stage/.python-minor"), glibc >= $(cat "$stage/.glibc-min"), $(( $(date +%s) - start )) s"
