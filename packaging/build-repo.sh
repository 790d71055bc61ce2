#!/usr/bin/env bash
# The signed apt repository, kept by reprepro: one suite per release in packaging/releases.
#
#   packaging/build-repo.sh init REPO          a new, empty repository in REPO (the published tree) and
#                                              REPO.state (reprepro's conf/ and db/: keep it, don't serve it)
#   packaging/build-repo.sh add REPO DEB...    publish .debs: each goes to the suite of the release its
#                                              revision names (0.2.0-1~deb13 -> trixie); a newer version
#                                              replaces the older one in that suite
#
# Signing (chosen at `init`, remembered in REPO.state/signing):
#   AIWM_REPO_KEY=<fingerprint>   sign with that secret key from $GNUPGHOME (default ~/.gnupg): the real key
#   unset                         a TEST key, generated once in $AIWM_REPO_GNUPGHOME (default
#                                 build/repo-gnupg) without passphrase: for tests and dev only
# The public key is exported next to the suites as REPO/aiwm-agentd-archive-keyring.gpg (binary, for
# Signed-By: in /etc/apt/keyrings) and REPO/aiwm-agentd-archive-keyring.asc.
set -euo pipefail
usage="usage: build-repo.sh init REPO | add REPO DEB..."
cmd=${1:?$usage}
repo=${2:?$usage}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
log() { printf 'build-repo: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
command -v reprepro >/dev/null || die "reprepro missing: run tests/system/install-deps.sh"
command -v gpg >/dev/null || die "gpg missing: run tests/system/install-deps.sh"
mkdir -p "$repo"
repo=$(cd "$repo" && pwd)
state=$repo.state
releases=$(awk '!/^#/ && NF {print $1 " " $2}' "$here/releases")

stop_agent() { [ -n "${GNUPGHOME:-}" ] && gpgconf --kill gpg-agent 2>/dev/null || true; }
trap stop_agent EXIT

case $cmd in
init)
  rm -rf "$repo" "$state"
  mkdir -p "$repo" "$state/conf"
  if [ -n "${AIWM_REPO_KEY:-}" ]; then
    export GNUPGHOME=${GNUPGHOME:-$HOME/.gnupg}
    fpr=$(gpg --batch --with-colons --list-secret-keys -- "$AIWM_REPO_KEY" 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}' || true)
    [ -n "$fpr" ] || die "AIWM_REPO_KEY=$AIWM_REPO_KEY: no such secret key in GNUPGHOME=$GNUPGHOME"
    log "signing with $fpr from $GNUPGHOME"
  else
    gh=${AIWM_REPO_GNUPGHOME:-build/repo-gnupg}
    mkdir -p "$gh" && chmod 0700 "$gh"
    export GNUPGHOME=$(cd "$gh" && pwd)
    fpr=$(gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}' || true)
    if [ -z "$fpr" ]; then
      gpg --batch --quiet --passphrase '' --quick-gen-key \
        "aiwm-agentd TEST repository key (not for production) <aiwm@example.invalid>" ed25519 sign never 2>/dev/null \
        || die "could not generate a test signing key in $GNUPGHOME"
      fpr=$(gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}' || true)
      log "generated a TEST signing key $fpr in $GNUPGHOME"
    fi
    log "signing with the TEST key $fpr (set AIWM_REPO_KEY for the real one)"
  fi
  printf 'GNUPGHOME=%q\nfpr=%q\n' "$GNUPGHOME" "$fpr" >"$state/signing"
  while read -r codename suffix; do
    printf 'Origin: AIWM\nLabel: aiwm-agentd\nCodename: %s\nSuite: %s\nArchitectures: amd64\nComponents: main\nDescription: aiwm-agentd for %s (%s)\nSignWith: %s\n\n' \
      "$codename" "$codename" "$codename" "$suffix" "$fpr"
  done <<<"$releases" >"$state/conf/distributions"
  reprepro -s -b "$state" --outdir "$repo" export
  gpg --batch --export "$fpr" >"$repo/aiwm-agentd-archive-keyring.gpg"
  gpg --batch --armor --export "$fpr" >"$repo/aiwm-agentd-archive-keyring.asc"
  log "$repo: suites $(echo $(cut -d' ' -f1 <<<"$releases")), key $fpr"
  ;;
add)
  [ -f "$state/signing" ] || die "$repo is not a repository: run build-repo.sh init $repo first"
  [ $# -gt 0 ] || die "$usage"
  # shellcheck disable=SC1091
  . "$state/signing"
  export GNUPGHOME
  for deb in "$@"; do
    [ -f "$deb" ] || die "$deb: no such file"
    version=$(dpkg-deb -f "$deb" Version)
    codename=
    while read -r c suffix; do
      case $version in *"$suffix") codename=$c ;; esac
    done <<<"$releases"
    [ -n "$codename" ] || die "$deb: version $version names no release of packaging/releases (built with make deb/debs?)"
    reprepro -s -b "$state" --outdir "$repo" -C main includedeb "$codename" "$deb" \
      || die "reprepro could not add $deb to $codename"
    log "$codename: $(dpkg-deb -f "$deb" Package) $version"
  done
  ;;
*) die "$usage" ;;
esac
