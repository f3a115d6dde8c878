"""``imageport api``: serve the Image API v2 (with the import worker in embedded mode)."""

from __future__ import annotations

import ipaddress
import math
from typing import Annotated

import typer

from imageport.cli.common import EXIT_USAGE, settings

KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
HEAD_LIMIT = 64 * 1024  # bytes of request line and headers; a bigger head is refused (431)


def api_command(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (env IMAGEPORT_API_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port (env IMAGEPORT_API_PORT).", min=1, max=65535)
    ] = None,
) -> None:
    """Serve the Image API v2; with broker memory:// this process also runs the imports."""
    conf = settings()
    listen = host or conf.api_host
    if conf.auth_strategy == "noauth" and not is_loopback(listen):
        typer.echo(
            f"error [configuration_error] auth_strategy noauth makes every caller an "
            f"administrator, so imageport api listens only on a loopback address, not {listen}: "
            "set IMAGEPORT_AUTH_STRATEGY=keystone (or trusted-proxy behind an authenticating "
            "proxy), or listen on 127.0.0.1",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE)
    # Imported here, not at the top: every other command would pay for loading the web stack
    # (about half a second), an `imageport import` included.
    import uvicorn

    from imageport.api import create_app
    from imageport.api.http_head import bounded_protocol

    app = create_app(conf)
    uvicorn.run(
        app,
        host=listen,
        port=port or conf.api_port,
        log_level=conf.log_level,
        # Bodies stream through to the staging area; no proxy headers are trusted by default.
        proxy_headers=False,
        server_header=False,
        # httptools' C parser, not h11's Python one (see api/http_head.py), with the request
        # head bounded: at most HEAD_LIMIT bytes (room for a Keystone token and a proxy's
        # X-Service-Catalog), complete within client_socket_timeout of its first byte. uvicorn
        # closes an idle keep-alive connection after a few seconds; a stalled request *body*
        # is bounded by the app's BodyTimeoutMiddleware (client_socket_timeout too).
        http=bounded_protocol(HEAD_LIMIT, conf.client_socket_timeout),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # On SIGTERM, idle uploads must not keep the process up for client_socket_timeout.
        timeout_graceful_shutdown=math.ceil(conf.shutdown_grace_seconds),
        # No limit_concurrency: past it uvicorn answers 503 to everything, /healthz included;
        # uploads are capped by max_concurrent_uploads instead, and other requests hold no
        # more than a short database read.
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address
