#!/usr/bin/env bash
# Build dist/*.deb and/or dist/*.rpm from packaging/nfpm.yaml.
#
#   packaging/build-packages.sh deb|rpm|all
#
# Uses the relocated venv in $STAGE (build/pkg, made by build-venv.sh). Knobs (environment):
#   AIWM_PKG_VERSION  package version (default: aiwm_agentd.__version__)
#   AIWM_PKG_RELEASE  package release / Debian revision (default 1)
#   AIWM_DEB_SUFFIX   appended to the .deb's revision: the release it is built for, e.g. ~deb12 (default:
#                     none); the .rpm's release stays AIWM_PKG_RELEASE
#   AIWM_DEB_CODENAME the release's codename for the Debian changelog (default: unstable)
#   AIWM_ENV_EXAMPLE  the example env file shipped as /etc/aiwm/agent.env.example (default etc/agent.env.example)
#   DEB_COMPRESSION   override the .deb compression (gzip; the system test's throw-away upgrade uses zstd)
#   NFPM              the nfpm binary (default .venv/bin/nfpm)   DIST  output directory (default dist)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
formats=${1:-all}
stage=${STAGE:-build/pkg}
dist=${DIST:-dist}
nfpm=${NFPM:-.venv/bin/nfpm}
version=${AIWM_PKG_VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' aiwm_agentd/__init__.py)}
release=${AIWM_PKG_RELEASE:-1}
deb_release=$release${AIWM_DEB_SUFFIX:-}
case $deb_release in *[!A-Za-z0-9.+~]*) echo "build-packages: bad Debian revision '$deb_release'" >&2; exit 1 ;; esac
example=${AIWM_ENV_EXAMPLE:-etc/agent.env.example}
log() { printf 'build-packages: %s\n' "$*" >&2; }

[ -f "$example" ] || { log "$example is missing (the lead's example env file); set AIWM_ENV_EXAMPLE"; exit 1; }
[ -f "$stage/.python-minor" ] || { log "$stage has no venv: run packaging/build-venv.sh $stage"; exit 1; }
pyminor=$(cat "$stage/.python-minor")
glibc=$(cat "$stage/.glibc-min" 2>/dev/null || true)
instruction=${AIWM_INSTRUCTION_EXAMPLE:-etc/instruction.md.example}
[ -f "$instruction" ] || { log "$instruction is missing; set AIWM_INSTRUCTION_EXAMPLE"; exit 1; }
pynext=${pyminor%.*}.$(( ${pyminor#*.} + 1 ))
stage_abs=$(cd "$stage" && pwd)

# Maintainer scripts: each gets lib.sh inlined at its #LIB# line.
for f in packaging/scripts/deb/* packaging/scripts/rpm/*; do
  out=$stage/scripts/${f#packaging/scripts/}
  mkdir -p "$(dirname "$out")"
  sed -e '/^#LIB#$/{r packaging/scripts/lib.sh' -e 'd}' "$f" >"$out"
  chmod 0755 "$out"
done

# Debian changelog (a minimal one: the history lives in git).
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf '%s (%s-%s) %s; urgency=medium\n\n  * Built from aiwm-agentd %s (git %s).\n\n -- AIWM <aiwm@example.invalid>  %s\n' \
  aiwm-agentd "$version" "$deb_release" "${AIWM_DEB_CODENAME:-unstable}" "$version" "$commit" \
  "$(LC_ALL=C date -u -R -d "@$epoch")" \
  | gzip -9n >"$stage/changelog.Debian.gz"

sed -e "s|@VERSION@|$version|g" -e "s|@RELEASE@|$release|g" -e "s|@STAGE@|$stage_abs|g" \
    -e "s|@ENV_EXAMPLE@|$example|g" -e "s|@INSTRUCTION_EXAMPLE@|$instruction|g" -e "s|@GLIBC@|${glibc:-2.17}|g" -e "s|@PYMINOR@|$pyminor|g" -e "s|@PYNEXT@|$pynext|g" \
    packaging/nfpm.yaml >"$stage/nfpm.yaml"
if [ -n "${DEB_COMPRESSION:-}" ]; then
  sed -i "/^deb:/,/^[a-z]/s|^  compression: .*|  compression: $DEB_COMPRESSION|" "$stage/nfpm.yaml"
fi
mkdir -p "$dist"
case $formats in all) formats="deb rpm" ;; esac
for fmt in $formats; do
  start=$(date +%s%N)
  # The .deb's revision carries the release suffix (0.2.0-1~deb12 < 0.2.0-1~deb13 < 0.2.0-1).
  r=$release; [ "$fmt" = deb ] && r=$deb_release
  sed "s|^release: .*|release: \"$r\"|" "$stage/nfpm.yaml" >"$stage/nfpm-$fmt.yaml"
  out=$("$nfpm" package --config "$stage/nfpm-$fmt.yaml" --packager "$fmt" --target "$dist/" 2>&1) \
    || { echo "$out" >&2; exit 1; }
  file=$(echo "$out" | sed -n 's/.*created package: //p' | tail -n 1)
  log "$file: $(du -h "$file" | cut -f1) in $(( ($(date +%s%N) - start) / 1000000000 )) s"
done
