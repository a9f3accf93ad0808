"""Command line: `sidecar run | check | schema | export nginx | receiver`, `--version`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    config_path,
    json_schema,
    load_settings,
)
from .config.advice import advice
from .logs import setup_logging


def _config_path(value: str | None) -> Path:
    return config_path(value, os.environ)


def _load_or_exit(path: Path) -> Settings:
    try:
        return load_settings(path, env=os.environ)
    except ConfigError as error:
        print(
            f"{error.source}: invalid configuration ({len(error.problems)} problem(s)):",
            file=sys.stderr,
        )
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def routes_table(settings: Settings) -> str:
    """A plain-text table of the routes, as `sidecar check` prints it."""
    rows = [("ROUTE", "METHOD", "PATH", "WAIT", "BUDGET", "CORRELATION")]
    for r in settings.routes:
        wait = "pass-through"
        if r.wait:
            wait = "+".join(
                part
                for part, on in (
                    (f"stream:{r.wait.stream.stream_id}" if r.wait.stream else "", r.wait.stream),
                    ("poll", r.wait.poll),
                )
                if on
            )
        rows.append((r.name, r.method, r.path, wait, f"{r.budget:g}s", r.correlation.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Serve until stopped; `CANNOT_START` at once, saying why in one line, when no restart
    could help (a port in use, no writable directory for the workers' metrics)."""
    from .server import serve  # keeps `check` and `schema` light
    from .workers import CANNOT_START, CannotStart, Supervisor, in_worker, worker_count

    path = _config_path(args.config)
    settings = _load_or_exit(path)
    setup_logging(settings.log.level, settings.log.format)
    count = worker_count(settings)
    try:
        if count > 1 and not in_worker():
            if not sys.platform.startswith("linux"):
                print(
                    f"{path}: workers: {settings.workers} needs Linux (SO_REUSEPORT "
                    "balancing); run one process per port, or several replicas",
                    file=sys.stderr,
                )
                return 2
            return asyncio.run(Supervisor(settings, path, count).run())
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, path))
    except CannotStart as reason:
        logging.getLogger("sidecar.server").error(f"{reason}; exiting")
        return CANNOT_START
    return 0


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop's when asked for (or, with `auto`, when installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            print("event_loop: uvloop is not installed (pip install uvloop)", file=sys.stderr)
            raise SystemExit(1) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and print the routes."""
    path = _config_path(args.config)
    settings = _load_or_exit(path)
    print(f"{path}: OK, {len(settings.routes)} route(s); upstream {settings.upstream}")
    if settings.routes:
        print(routes_table(settings))
    if settings.clients.max_connections == "auto":
        print(auto_connections(settings))
    for said in advice(settings):
        print(f"warning: {said}", file=sys.stderr)
    return 0


def auto_connections(settings: Settings) -> str:
    """What `clients.max_connections: auto` comes to on the machine `sidecar check` runs on,
    said to be that machine's: the one that runs the sidecar derives its own at start."""
    from .process import client_connections, raise_to_hard_limit, reserved_files

    limit = raise_to_hard_limit()  # as `sidecar run` does; this process ends right after
    reserve = reserved_files(settings)
    kept = ", ".join(f"{what} {n}" for what, n in reserve.items())
    each = " in each worker" if settings.workers != 1 else ""
    return (
        f"clients.max_connections: auto comes to {client_connections(settings, limit)} per "
        f"listener{each} on this machine (the check machine's open-files limit {limit}, "
        f"raised to its hard limit as `sidecar run` does, less {sum(reserve.values())} kept "
        f"for {kept}); where the sidecar runs, its own limit decides, stated at start"
    )


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the config's JSON Schema."""
    print(json.dumps(json_schema(), indent=2, sort_keys=False))
    return 0


def sidecar_address(listen: str) -> str:
    """Where a front on the same host reaches the proxy listener `listen` (a wildcard address
    becomes the loopback one)."""
    host, _, port = listen.rpartition(":")
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    if bare == "::":
        return f"[::1]:{port}"
    return listen


def cmd_export(args: argparse.Namespace) -> int:
    """Write the configuration of a front (nginx) that sends the sidecar only what it answers
    and everything else straight to the API, from the config's route table."""
    from .front import FrontOptions, option_problems, plan_front, render_nginx

    path = _config_path(args.config)
    settings = _load_or_exit(path)
    sidecar = args.sidecar or sidecar_address(settings.listen)
    if sidecar_address(args.listen) == sidecar_address(sidecar):
        print(
            f"--listen {args.listen} is the sidecar's own address: give the front another "
            "(or move the sidecar's listen, and say where with --sidecar)",
            file=sys.stderr,
        )
        return 2
    options = FrontOptions(
        listen=args.listen,
        sidecar=sidecar,
        server_name=args.server_name,
        trust_forwarded=args.trust_forwarded,
        source=str(path),
    )
    for problem in option_problems(options):
        print(problem, file=sys.stderr)
    if option_problems(options):
        return 2
    plan = plan_front(settings)
    text = render_nginx(plan, options)
    if args.output and args.output != "-":
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for said in export_advice(settings, plan.synchronised != [] or plan.long_polls):
        print(f"warning: {said}", file=sys.stderr)
    return 0


def export_advice(settings: Settings, sends_the_sidecar_calls: bool) -> list[str]:
    """What the sidecar's config should change to run behind the front."""
    said = []
    if not settings.proxy.trust_forwarded_headers:
        said.append(
            "proxy.trust_forwarded_headers is false: behind the front the sidecar would send "
            "the API the front's address as X-Forwarded-For on the calls it takes; set it to "
            "true and let only the front reach the sidecar (listen on 127.0.0.1 or a private "
            "address)"
        )
    if not sends_the_sidecar_calls:
        said.append(
            "no route waits and redis_url is unset: the front sends the sidecar nothing but "
            "paths with dot segments"
        )
    return said


RECEIVER_EXTRA_MISSING = (
    "sidecar receiver needs the standardwebhooks package, which the 'receiver' extra installs:\n"
    "  pip install 'sidecar[receiver]'"
)


def cmd_receiver(argv: list[str]) -> int:
    """Run the example webhook receiver; its own parser reads `argv`."""
    try:
        from .receiver import main as receiver_main  # needs the optional standardwebhooks
    except ImportError as error:
        if not (error.name or "").startswith("standardwebhooks"):
            raise
        print(RECEIVER_EXTRA_MISSING, file=sys.stderr)
        return 1
    receiver_main(argv, prog="sidecar receiver")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="sidecar", description="A synchronising sidecar for asynchronous REST APIs."
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
        ("run", cmd_run, "serve the proxy and admin listeners"),
        ("check", cmd_check, "validate a config file and print its routes"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "-c",
            "--config",
            help=f"config file (default $SIDECAR_CONFIG, else {DEFAULT_CONFIG_PATH})",
        )
        p.set_defaults(func=func)
    p = sub.add_parser("schema", help="print the config's JSON Schema")
    p.set_defaults(func=cmd_schema)
    export = sub.add_parser("export", help="write a front's configuration for the routes")
    kinds = export.add_subparsers(dest="front", required=True)
    p = kinds.add_parser(
        "nginx",
        help="an nginx include: synchronised routes, long-polls and the status monitor to the "
        "sidecar, everything else straight to the API",
    )
    p.add_argument(
        "-c", "--config", help=f"config file (default $SIDECAR_CONFIG, else {DEFAULT_CONFIG_PATH})"
    )
    p.add_argument("-o", "--output", help="write it to this file (default: standard output)")
    p.add_argument(
        "--listen",
        default="0.0.0.0:80",
        help="nginx's listen: host:port or port (default %(default)s)",
    )
    p.add_argument(
        "--sidecar",
        help="host:port at which nginx reaches the sidecar's proxy listener (default: its "
        "listen, a wildcard address as the loopback one)",
    )
    p.add_argument("--server-name", default="_", help="nginx's server_name (default %(default)s)")
    p.add_argument(
        "--trust-forwarded",
        action="store_true",
        help="keep clients' X-Forwarded-* (the front is behind a load balancer you trust)",
    )
    p.set_defaults(func=cmd_export)
    # Listed for --help only: main() hands everything after `receiver` to the receiver's parser.
    sub.add_parser(
        "receiver",
        add_help=False,
        help="receive, verify and print webhooks (pip install 'sidecar[receiver]')",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sidecar` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["receiver"]:
        return cmd_receiver(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
