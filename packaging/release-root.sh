#!/usr/bin/env bash
# A minbase root of one supported release, debootstrapped once a day and cached.
#
#   packaging/release-root.sh CODENAME KIND INCLUDE      prints the root's path
#
# KIND names the flavour (e.g. `build`: what build-venv.sh needs; `minbase`: what the system test boots),
# INCLUDE is debootstrap's --include list. The root lives in $AIWM_SYSTEST_CACHE
# (/var/cache/aiwm-agentd-test) as CODENAME-KIND-YYYYMMDD; older days of the same CODENAME-KIND are
# deleted. Concurrent callers wait for each other (flock). The mirror is the release's line in
# packaging/releases ($AIWM_SYSTEST_MIRROR overrides it). Must run as root.
set -euo pipefail
codename=${1:?usage: release-root.sh CODENAME KIND INCLUDE}
kind=${2:?usage: release-root.sh CODENAME KIND INCLUDE}
include=${3:?usage: release-root.sh CODENAME KIND INCLUDE}
here=$(cd "$(dirname "$0")" && pwd)
cache=${AIWM_SYSTEST_CACHE:-/var/cache/aiwm-agentd-test}
log() { printf 'release-root: %s\n' "$*" >&2; }

mirror=$(awk -v c="$codename" '$1 == c {print $3}' "$here/releases")
[ -n "$mirror" ] || { log "$codename is not in packaging/releases"; exit 1; }
mirror=${AIWM_SYSTEST_MIRROR:-$mirror}
[ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing: run tests/system/install-deps.sh"; exit 1; }

key=$codename-$kind-$(date -u +%Y%m%d)
path=$cache/$key
mkdir -p "$cache"
exec 9>"$cache/.$codename-$kind.lock"
flock 9
for old in "$cache/$codename-$kind-"*; do
  case $old in "$path" | "$path.ok") ;; *) [ -e "$old" ] && rm -rf "$old" ;; esac
done
# The .ok marker records the --include list: a root made with another list is made again.
if [ -d "$path" ] && [ -e "$path.ok" ] && [ "$(cat "$path.ok")" = "$include" ]; then
  echo "$path"
  exit 0
fi
rm -rf "$path" "$path.ok"
tmp=$cache/.$key.tmp-$$
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
log "debootstrap $codename ($kind) from $mirror"
out=$(debootstrap --variant=minbase --include="$include" "$codename" "$tmp" "$mirror" 2>&1) || {
  echo "$out" | tail -20 >&2
  log "debootstrap of $codename failed (see above)"
  exit 1
}
mv "$tmp" "$path"
trap - EXIT
echo "$include" >"$path.ok"
log "$codename ($kind) ready in $(( $(date +%s) - start )) s: $path"
echo "$path"
