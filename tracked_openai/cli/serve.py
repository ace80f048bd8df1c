"""``tracked-openai serve``: the REST API on a local port (needs ``tracked-openai[api]``)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import Any

from .. import reports
from .output import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, store_option, tracking_uri

TOKEN_ENV = "TRACKED_OPENAI_API_TOKEN"

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    common = [store_option()]
    p = sub.add_parser(
        "serve",
        parents=common,
        help="serve the REST API (needs tracked-openai[api])",
        description="Serves the REST API (experiments, runs, metrics, totals, health, budgets) and "
        "its docs at /api/docs/ (work offline). Prints the address once the port accepts connections. "
        "Binds 127.0.0.1; another interface needs a bearer token (--token or "
        f"${TOKEN_ENV}) or --insecure.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' on every endpoint (default ${TOKEN_ENV})",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback --host without a token (anyone who can reach it reads the numbers)",
    )
    p.set_defaults(handler=cmd_serve)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def cmd_serve(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not _loopback(args.host) and token is None and not args.insecure:
        print(
            f"tracked-openai serve: error: refusing to serve cost data on {args.host} without a "
            f"token: pass --token (or set {TOKEN_ENV}), or --insecure if the network is trusted",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        import uvicorn

        from ..contrib.fastapi import create_app
    except ImportError as exc:
        print(
            f"tracked-openai: error: serve needs the API extra ({exc.name} is missing): "
            "pip install 'tracked-openai[api]'",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    uri = reports.resolve_tracking_uri(tracking_uri(args))
    try:
        reports.check_store(uri)
    except reports.StoreUnavailableError as exc:
        # The store may appear later (the application has not written yet): serve anyway.
        print(f"tracked-openai serve: warning: {exc}; the endpoints answer 503 until it is there",
              file=sys.stderr)
    app = create_app(tracking_uri=uri, token=token)
    host = args.host

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            # Only now does the port accept connections (a failed bind has exited above).
            port = args.port
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    port = sock.getsockname()[1]
            print(f"tracked-openai API on http://{host}:{port}/api/docs/ "
                  f"(store: {reports.display_uri(uri)})", file=sys.stderr, flush=True)

    Server(uvicorn.Config(app, host=host, port=args.port, log_level="warning")).run()
    return EXIT_OK
