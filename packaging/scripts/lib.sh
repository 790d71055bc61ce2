# --- shared by the maintainer scripts (packaging/scripts/lib.sh, prepended at build time) ---
AIWM_USER=aiwm-agentd
AIWM_ENV=/etc/aiwm/agent.env
AIWM_EXAMPLE=/etc/aiwm/agent.env.example
AIWM_UNIT=aiwm-agentd.service
# The tool sandbox's identity: the Claude CLI and its tools run as this user (README, "Tool sandbox"). It is
# in no group of the daemon's, so it cannot read /etc/aiwm/*.env or /var/lib/aiwm-agentd*.
AIWM_TOOLS_USER=aiwm-agentd-tools
AIWM_TOOLS_DIR=/var/lib/aiwm-agentd-tools

# Every unit of the package that may be running, the tools spawners (which run the packaged code too) and
# their sockets included.
aiwm_stop_all() {
  systemctl stop "$AIWM_UNIT" 'aiwm-agentd@*.service' aiwm-agentd-tools.socket 'aiwm-agentd-tools@*.socket' \
    aiwm-agentd-tools.service 'aiwm-agentd-tools@*.service' || true
}

# The tool-sandbox drop-in of earlier versions (setpriv, CAP_SETUID) is gone: the tools spawner unit replaced
# it. The links operators made to it would dangle; remove them (never a file someone wrote themselves).
aiwm_remove_old_dropin_links() {
  for link in /etc/systemd/system/aiwm-agentd.service.d/tool-sandbox.conf \
              /etc/systemd/system/aiwm-agentd@*.service.d/tool-sandbox.conf; do
    if [ -L "$link" ] && [ "$(readlink "$link")" = /usr/share/aiwm-agentd/tool-sandbox.conf ]; then
      rm -f "$link"
    fi
  done
}

aiwm_systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

aiwm_create_user() {
  getent group "$AIWM_USER" >/dev/null 2>&1 || groupadd --system "$AIWM_USER"
  getent passwd "$AIWM_USER" >/dev/null 2>&1 || useradd --system --gid "$AIWM_USER" \
    --home-dir /var/lib/aiwm-agentd --no-create-home --shell /usr/sbin/nologin \
    --comment "AIWM agent daemon" "$AIWM_USER"
  getent group "$AIWM_TOOLS_USER" >/dev/null 2>&1 || groupadd --system "$AIWM_TOOLS_USER"
  getent passwd "$AIWM_TOOLS_USER" >/dev/null 2>&1 || useradd --system --gid "$AIWM_TOOLS_USER" \
    --home-dir "$AIWM_TOOLS_DIR" --no-create-home --shell /usr/sbin/nologin \
    --comment "AIWM agent tools (sandbox)" "$AIWM_TOOLS_USER"
  # Its workspace (aiwm-agentd-tools.service's StateDirectory; systemd would create it too).
  install -d -m 0700 -o "$AIWM_TOOLS_USER" -g "$AIWM_TOOLS_USER" "$AIWM_TOOLS_DIR"
}

# The operator's env file: created from the example only when absent, root:aiwm-agentd 0640 (it holds
# secrets; the service reads it as its group). An existing file's content is never touched, so upgrades
# keep it. One exception, on first install only ($1 = first): a file provisioned before the package (e.g.
# by cloud-init) could not have the aiwm-agentd group yet; a root-group file gets root:aiwm-agentd 0640
# so that the daemon can read it.
aiwm_install_env() {
  if [ ! -e "$AIWM_ENV" ] && [ ! -L "$AIWM_ENV" ] && [ -f "$AIWM_EXAMPLE" ]; then
    install -m 0640 -o root -g "$AIWM_USER" "$AIWM_EXAMPLE" "$AIWM_ENV"
  elif [ "${1:-}" = first ] && [ -f "$AIWM_ENV" ] && [ ! -L "$AIWM_ENV" ] \
       && [ "$(stat -c %g "$AIWM_ENV")" = 0 ]; then
    chown root:"$AIWM_USER" "$AIWM_ENV" && chmod 0640 "$AIWM_ENV"
  fi
}

# Last value of KEY in the env file, unquoted.
aiwm_env_value() {
  [ -r "$AIWM_ENV" ] || return 0
  sed -n "s/^[[:space:]]*\(export[[:space:]]\{1,\}\)\{0,1\}$1[[:space:]]*=[[:space:]]*//p" "$AIWM_ENV" \
    | tail -n 1 | sed -e 's/^"\(.*\)".*$/\1/' -e "s/^'\(.*\)'.*\$/\\1/" -e 's/[[:space:]]\{1,\}#.*$//' \
      -e 's/[[:space:]]*$//'
}

# "Configured" = the operator filled in the agent secret, or switched the controller link off
# (AIWM_ENABLED=false, local mode). Only then is the daemon started on install.
aiwm_configured() {
  [ -n "$(aiwm_env_value AIWM_AGENT_SECRET)" ] && return 0
  case "$(aiwm_env_value AIWM_ENABLED | tr '[:upper:]' '[:lower:]')" in
    false|0|no|off) return 0 ;;
  esac
  return 1
}

aiwm_start_if_configured() {
  aiwm_systemd_running || return 0
  if aiwm_configured; then
    # A failed start (e.g. a bad value: exit 78) must not fail the package transaction.
    systemctl start "$AIWM_UNIT" || echo "aiwm-agentd: start failed; see journalctl -u aiwm-agentd" >&2
  else
    echo "aiwm-agentd: installed and enabled, not started: set AIWM_AGENT_SECRET (or AIWM_ENABLED=false)" \
      "in $AIWM_ENV, then run: systemctl start aiwm-agentd" >&2
  fi
}

aiwm_purge_state() {
  rm -f "$AIWM_ENV"
  rmdir /etc/aiwm 2>/dev/null || true
  rm -rf /var/lib/aiwm-agentd /var/lib/aiwm-agentd-* "$AIWM_TOOLS_DIR" /var/lib/aiwm-tools-* /var/lib/private/aiwm-tools-*
  rm -f /etc/systemd/system/multi-user.target.wants/aiwm-agentd.service \
        /etc/systemd/system/multi-user.target.wants/aiwm-agentd@*.service
  if getent passwd "$AIWM_USER" >/dev/null 2>&1; then userdel "$AIWM_USER" >/dev/null 2>&1 || true; fi
  if getent group "$AIWM_USER" >/dev/null 2>&1; then groupdel "$AIWM_USER" >/dev/null 2>&1 || true; fi
  if getent passwd "$AIWM_TOOLS_USER" >/dev/null 2>&1; then userdel "$AIWM_TOOLS_USER" >/dev/null 2>&1 || true; fi
  if getent group "$AIWM_TOOLS_USER" >/dev/null 2>&1; then groupdel "$AIWM_TOOLS_USER" >/dev/null 2>&1 || true; fi
}
# --- end of lib.sh ---
