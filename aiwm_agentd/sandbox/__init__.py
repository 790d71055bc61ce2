"""The tool sandbox: the Claude CLI and its tools run as a separate unprivileged user without the daemon's keys.

- `identity`: can this daemon separate (tools user, CAP_SETUID/CAP_SETGID, the uid mapped)? Said once and in
  /health when it cannot.
- `launcher`: the `cli_path` shell script that copies the per-child files into the tools workspace and execs
  the CLI through `setsid` + `setpriv` + `env -i` (new session, tools uid/gid, no groups, no capabilities,
  no-new-privs, an explicit environment), and the process-group kill that goes through the same drop.
- `api_proxy`: the loopback Anthropic API proxy that swaps a per-child token for the real credential.
"""
