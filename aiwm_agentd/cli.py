"""The `aiwm-agentd` command: run, check-config, connect, status, ask."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiwm_agentd import __version__
from aiwm_agentd.config import (
    DEFAULT_ENV_FILE,
    EX_CONFIG,
    ConfigError,
    DaemonSettings,
    build_agent_config,
    format_host_port,
    load_daemon_settings,
    read_env_file,
    read_instruction_file,
)

if TYPE_CHECKING:
    from aiwm_agentd.controller.client import ControllerClient
    from aiwm_agentd.controller.wire import ControllerConfig

EX_UNAVAILABLE = 69  # sysexits: the controller or the daemon could not be reached / refused


def _add_env_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE, metavar="PATH",
                        help=f"env file to read (default {DEFAULT_ENV_FILE}; the process environment "
                             "fills in what it does not set)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiwm-agentd",
        description="Daemon that turns this machine into an AIWM-managed AI agent.",
    )
    parser.add_argument("--version", action="version", version=f"aiwm-agentd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (what systemd starts)")
    _add_env_file(run)

    check = sub.add_parser("check-config", help="validate the env file and print the resolved configuration")
    _add_env_file(check)
    check.add_argument("--connect", action="store_true",
                       help="also connect to the controller and resolve its settings")

    connect = sub.add_parser("connect", help="connect once, send one heartbeat, print what the controller said")
    _add_env_file(connect)
    connect.add_argument("--json", action="store_true", help="print machine-readable JSON")

    status = sub.add_parser("status", help="read the running daemon's /health; exit 1 when unhealthy")
    _add_env_file(status)
    status.add_argument("--addr", help="HOST:PORT of the health endpoint (default: AIWM_HEALTH_ADDR)")
    status.add_argument("--json", action="store_true", help="print the raw /health JSON")

    ask = sub.add_parser("ask", help="run one Claude turn with the daemon's configuration and print the reply")
    _add_env_file(ask)
    ask.add_argument("text", help="the message to send")
    ask.add_argument("--conversation", default="cli:ask", metavar="KEY",
                     help="conversation key platform:chat[:thread] (default cli:ask); reuse it to continue")
    ask.add_argument("--timeout", type=float, default=None, help="seconds to wait for the reply")

    sub.add_parser("tools-spawner", add_help=False,
                   help="start the Claude CLI as the tools user for the daemon (what aiwm-agentd-tools.service "
                        "runs; --help for its options)")
    return parser


def _client(settings: DaemonSettings, env: dict[str, str]) -> ControllerClient:
    from aiwm_agentd.controller.client import ControllerClient, proxies_from_env

    proxies, no_proxy = proxies_from_env(env)
    return ControllerClient(settings.base_url, settings.agent_id, settings.agent_secret,
                            timeout=settings.request_timeout, verify=settings.verify, proxies=proxies,
                            no_proxy=no_proxy)


def _disconnect_quietly(client: ControllerClient, controller: ControllerConfig | None, reason: str) -> None:
    """A one-shot command that connected also disconnects, or the portal shows the agent online for hours."""
    from aiwm_agentd.controller.client import ControllerError

    try:
        if controller is not None:
            with contextlib.suppress(ControllerError):
                client.disconnect(controller.token, reason, timeout=2.0)
    finally:
        client.close()


def _load(env_file: str) -> tuple[dict[str, str], DaemonSettings]:
    env = read_env_file(env_file)
    return env, load_daemon_settings(env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "tools-spawner":
        from aiwm_agentd.sandbox.spawner import main as spawner_main

        return spawner_main(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check-config":
            return cmd_check_config(args)
        if args.command == "connect":
            return cmd_connect(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "ask":
            return cmd_ask(args)
    except ConfigError as exc:
        from aiwm_agentd.logs import print_fatal  # priority err under journald: `journalctl -p err` shows why

        print_fatal(f"aiwm-agentd: configuration error: {exc}")
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from aiwm_agentd.logs import install_excepthooks, parse_level, setup_logging

    env, settings = _load(args.env_file)
    setup_logging(parse_level(settings.log_level))
    install_excepthooks()  # a crash in any thread reaches the journal masked, at priority err
    # A watchdog kill (SIGABRT) then leaves every thread's stack in the journal.
    faulthandler.enable()
    log = logging.getLogger("aiwm_agentd")
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError("AIWM_STATE_DIR", "a writable directory", f"{settings.state_dir}: {exc.strerror}") from None
    from aiwm_agentd.supervisor import Supervisor

    log.info("aiwm-agentd %s starting (env file %s)", __version__, args.env_file)
    code = Supervisor(settings, env, env_file=args.env_file).run()
    # Everything is stopped and closed by now. With the SDK and both bot libraries loaded, the
    # interpreter's own teardown (module and object finalisation) takes another 0.3-0.4 s, which
    # systemd would count as stop time: skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_provenance(rows: Sequence[tuple[str, str, str]]) -> None:
    width = max((len(k) for k, _, _ in rows), default=10)
    vwidth = min(48, max((len(v) for _, v, _ in rows), default=10))
    for key, value, origin in rows:
        print(f"  {key:<{width}}  {value:<{vwidth}}  {origin}")


def cmd_check_config(args: argparse.Namespace) -> int:
    from aiwm_agentd.config import describe_daemon_settings

    env, settings = _load(args.env_file)
    print(f"env file: {args.env_file}")
    print("daemon settings:")
    _print_provenance([(p.key, p.shown, p.origin) for p in describe_daemon_settings(settings)])
    controller = None
    exit_code = 0
    if args.connect and settings.enabled:
        from aiwm_agentd.controller.client import ControllerError

        client = _client(settings, env)
        try:
            controller = client.connect()
            print(f"controller: connected ({controller.wire_version})")
        except ControllerError as exc:
            print(f"controller: connect failed: {exc.describe()} [correlation id {exc.correlation_id}]")
            exit_code = EX_UNAVAILABLE
        finally:
            _disconnect_quietly(client, controller, "aiwm-agentd check-config --connect")
    local = read_instruction_file(settings.instruction_file) if controller is None else None
    config = build_agent_config(env, controller, settings, local)
    print("agent configuration:")
    _print_provenance([(p.key, p.shown, p.origin) for p in config.provenance])
    for warning in config.warnings:
        print(f"warning: {warning}")
    if not settings.enabled:
        print("mode: local (AIWM_ENABLED=false)")
    print("configuration OK" if exit_code == 0 else "configuration OK, but the controller refused or is unreachable")
    return exit_code


def cmd_connect(args: argparse.Namespace) -> int:
    from aiwm_agentd.controller.client import ControllerError
    from aiwm_agentd.logs import mask
    from aiwm_agentd.sampler import MetricsSampler

    env, settings = _load(args.env_file)
    if not settings.enabled:
        print("AIWM_ENABLED=false: nothing to connect to (local mode)", file=sys.stderr)
        return EX_CONFIG
    client = _client(settings, env)
    report: dict[str, Any] = {"controller": settings.base_url, "agent_id": settings.agent_id}
    code = 0
    controller = None
    try:
        started = time.monotonic()
        controller = client.connect()
        report["connect"] = {
            "ok": True,
            "seconds": round(time.monotonic() - started, 3),
            "wire_version": controller.wire_version,
            "agent_name": controller.agent_name,
            "token": "*** (received)",
            "token_expires_at": controller.expires_at,
            "instruction": controller.instruction[:500],
            "tools": list(controller.tools or ()),
            "allowed_functions": list(controller.allowed_functions),
            "settings_keys": sorted(controller.settings.keys()),
            "mcp_servers": sorted(controller.mcp_servers.keys()),
            "deployment_base_url": controller.deployment_base_url,
            "channels": [{"platform": c.platform, "enabled": c.enabled, "channel_ids": list(c.channel_ids)}
                         for c in controller.channels],
        }
        config = build_agent_config(env, controller, settings)
        report["warnings"] = list(config.warnings)
        sampler = MetricsSampler()
        for status in ("idle", "online"):
            try:
                hb = client.heartbeat(controller.token, status, sampler.sample(0, False))
                report["heartbeat"] = {"ok": True, "status_sent": status, "answer": dict(hb.body)}
                break
            except ControllerError as exc:
                report["heartbeat"] = {"ok": False, "status_sent": status, "error": exc.describe(),
                                       "correlation_id": exc.correlation_id}
                if not (exc.kind == "rejected" and exc.mentions("status")):
                    code = EX_UNAVAILABLE
                    break
    except ControllerError as exc:
        report["connect"] = {"ok": False, "error": exc.describe(), "kind": exc.kind,
                             "correlation_id": exc.correlation_id}
        code = EX_UNAVAILABLE
    finally:
        _disconnect_quietly(client, controller, "aiwm-agentd connect (manual test)")
    text = json.dumps(report, indent=2, default=str)
    print(mask(text))
    return code


def cmd_status(args: argparse.Namespace) -> int:
    import requests

    addr = args.addr
    if not addr:
        try:
            _, settings = _load(args.env_file)
        except ConfigError:
            settings = None
        if settings is None or settings.health_addr is None:
            addr = "127.0.0.1:9464"
        else:
            host, port = settings.health_addr
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # listen-all: ask locally
            addr = format_host_port(host, port)
    try:
        response = requests.get(f"http://{addr}/health", timeout=5)
        data = response.json()
    except (requests.RequestException, ValueError) as exc:
        print(f"aiwm-agentd is not answering on http://{addr}/health: {type(exc).__name__}", file=sys.stderr)
        return EX_UNAVAILABLE
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from aiwm_agentd.status import format_health_text

        print(format_health_text(data))
    return 0 if data.get("healthy") else 1


def _state_owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def cmd_ask(args: argparse.Namespace) -> int:
    from aiwm_agentd.controller.client import ControllerError
    from aiwm_agentd.logs import parse_level, setup_logging
    from aiwm_agentd.runner import ask_once
    from aiwm_agentd.workers import ConversationKey

    env, settings = _load(args.env_file)
    setup_logging(max(parse_level(settings.log_level), logging.WARNING))
    owner = _state_owner(settings.state_dir)
    if owner is not None and owner != os.geteuid():
        # Files created here (sessions, the Claude config dir) must stay writable by the daemon's user.
        try:
            user = pwd.getpwuid(owner).pw_name
        except KeyError:
            user = str(owner)
        print(f"aiwm-agentd: AIWM_STATE_DIR {settings.state_dir} belongs to {user}; run as that user, "
              f"e.g. sudo -u {user} aiwm-agentd ask ...", file=sys.stderr)
        return EX_CONFIG
    controller = None
    client = _client(settings, env) if settings.enabled else None
    try:
        if client is not None:
            try:
                controller = client.connect()
            except ControllerError as exc:
                print(f"aiwm-agentd: controller unavailable ({exc.describe()}); using the local configuration",
                      file=sys.stderr)
        local = read_instruction_file(settings.instruction_file) if controller is None else None
        config = build_agent_config(env, controller, settings, local)
        reply = ask_once(config, args.text, ConversationKey.parse(args.conversation), timeout=args.timeout)
    finally:
        if client is not None:
            _disconnect_quietly(client, controller, "aiwm-agentd ask")
    print(reply.text)
    return 1 if reply.error else 0


if __name__ == "__main__":
    sys.exit(main())
