"""``imageport api``: serve the Image API v2 (with the import worker in embedded mode)."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from imageport.api import create_app
from imageport.cli.common import settings


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
    app = create_app(conf)
    uvicorn.run(
        app,
        host=host or conf.api_host,
        port=port or conf.api_port,
        log_level=conf.log_level,
        # Bodies stream through to the staging area; no proxy headers are trusted by default.
        proxy_headers=False,
        server_header=False,
    )
