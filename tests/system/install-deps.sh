#!/usr/bin/env bash
# Install (apt) what `make deb(s)`, `make rpm`, `make repo` and `make test-system` need on a fresh Debian 12.
# Idempotent and quiet: does nothing when everything is already there. Run as root (or with sudo).
set -euo pipefail
packages=(
  python3 python3-venv    # the package's virtualenv is built with the target's /usr/bin/python3
  debootstrap             # make debs, test-system: the root of each supported release
  systemd-container       # test-system: systemd-nspawn
  util-linux              # nsenter
  rpm                     # make rpm inspection, rpm --root install in test-system
  rpmlint                 # make rpmlint
  lintian                 # make lintian
  dpkg-dev binutils       # dpkg-deb, objdump for lintian
  zstd                    # deb/rpm payload compression
  openssl                 # test-system: self-signed cert for the loopback HTTPS check
  reprepro gnupg          # make repo: the signed apt repository
  ca-certificates
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
echo "install-deps: apt-get install ${missing[*]}" >&2
log=$(mktemp)
if ! { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
