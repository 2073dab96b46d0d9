"""The `quotad` command as installed: quotad's commands plus `serve`.

quotad may not import the HTTP layer, so the top layer assembles the command:
the console script points here and hands quotad's CLI the `serve` command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quotad import cli, logs
from quotad.config import load_settings


def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here so that every other command starts without the web stack.
    import uvicorn  # noqa: PLC0415

    from api.app import create_app  # noqa: PLC0415

    settings = load_settings(args.config)
    logs.configure(settings.logging, verbose=args.verbose)
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    scheduler = settings.scheduler.enabled and not args.no_scheduler
    uvicorn.run(
        create_app(settings, scheduler=scheduler),
        host=host,
        port=port,
        # The identity header is trusted by the TCP peer's address; uvicorn must
        # not replace that peer with whatever X-Forwarded-For claims.
        proxy_headers=False,
        server_header=False,
        # uvicorn's own lines through quotad's handler; its access log is
        # replaced by quotad's, which carries the request id.
        **logs.uvicorn_options(),
    )
    return cli.EXIT_OK


def add_serve(add: cli.AddCommand) -> None:
    serve = add("serve", cmd_serve, "the HTTP API")
    serve.add_argument("--host", help="address to listen on (default: [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: [server] port, 8640)")
    serve.add_argument(
        "--no-scheduler",
        action="store_true",
        help="run no scheduled jobs (another process runs them: `quotad scheduler`)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, extensions=[add_serve])


def run() -> None:
    sys.exit(main())
