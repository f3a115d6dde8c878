#!/usr/bin/env python3
"""A plain upload sink: uvicorn and a tiny ASGI app that writes each request body to a file.

The yardstick for ``PUT /v2/images/ID/stage``: the same server stack as ``imageport api``
(uvicorn with httptools' parser; ``imageport api`` adds only its bounds on the request head),
and an app that does nothing but write each body chunk, as it arrives, to a new file in the
sink directory. ``PUT /anything`` writes ``DIR/anything`` (slashes flattened) and answers 204
with the byte count in ``x-bytes``; ``GET /healthz`` answers 200. No hashing, no inspection, no
database. The writes are plain ``os.write`` calls in the event loop, no fsync.

    python bench/upload_sink.py --dir DIR [--host 127.0.0.1] [--port 8099]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def answer(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        kind = (await receive())["type"]
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def write_body(path: Path, receive: Receive) -> int | None:
    """Write the request body to path, chunk by chunk; its length, or None on disconnect."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    total = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            total += len(body)
            if not message.get("more_body", False):
                return total
    finally:
        os.close(fd)


def make_app(directory: Path) -> App:
    """The sink's ASGI app, writing under ``directory``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] != "http":
            return
        elif scope["method"] == "GET" and scope["path"] == "/healthz":
            await answer(send, 200, [])
        elif scope["method"] != "PUT":
            await answer(send, 405, [])
        else:
            name = scope["path"].strip("/").replace("/", "_") or "body"
            total = await write_body(directory / name, receive)
            if total is not None:
                await answer(send, 204, [(b"x-bytes", str(total).encode())])

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="where bodies are written")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    args = p.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        make_app(args.dir),
        host=args.host,
        port=args.port,
        log_level="warning",
        http="httptools",
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
