"""The ``imageport`` command: import, images, tasks, inspect, db."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from imageport.cli.admin import (
    cancel_command,
    reap_command,
    retry_command,
    watch_command,
    worker_command,
)
from imageport.cli.api_cmd import api_command
from imageport.cli.common import EXIT_FAILED, errors_to_exit, print_json, services, settings
from imageport.cli.copy_cmd import copy_command
from imageport.cli.imports import import_command
from imageport.cli.queue_cmd import queue_command
from imageport.cli.show import images_app, tasks_app
from imageport.cli.stores_cmd import stores_app

app = typer.Typer(
    help="imageport: the import and conversion pipeline of an Image API v2 service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.command("import")(import_command)
app.add_typer(images_app, name="images")
app.add_typer(tasks_app, name="tasks")
app.add_typer(db_app, name="db")
app.command("copy")(copy_command)
app.add_typer(stores_app, name="stores")
app.command("worker")(worker_command)
app.command("watch")(watch_command)
app.command("cancel")(cancel_command)
app.command("retry")(retry_command)
app.command("reap")(reap_command)
app.command("queue")(queue_command)
app.command("api")(api_command)


@app.command("inspect")
def inspect_command(
    file: Annotated[Path, typer.Argument(help="The disk image file to check.")],
    disk_format: Annotated[str | None, typer.Option(help="The declared disk format.")] = None,
    checksum: Annotated[str | None, typer.Option(help="Expected MD5.")] = None,
    hash_spec: Annotated[str | None, typer.Option("--hash", help="Expected ALGO:HEX.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run the stage, verify and inspect checks on FILE; nothing is stored."""
    from imageport.pipeline import Services, check_file  # see cli/common.py on start-up

    conf = settings()
    with errors_to_exit():
        qemu = Services.build_qemu(conf)
        result = check_file(
            file, conf, qemu, disk_format=disk_format, checksum=checksum, hash_spec=hash_spec
        )
    if as_json:
        print_json(result)
    else:
        for key in ("verdict", "detected_format", "virtual_size", "reason_code", "message"):
            typer.echo(f"{key}: {result[key]}")
    if result["verdict"] != "accept":
        raise typer.Exit(EXIT_FAILED)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (the embedded SQLite database does this by itself)."""
    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        svc.db.upgrade()
    typer.echo(f"database at {svc.db.engine.url.render_as_string(hide_password=True)} is current")


def main() -> None:
    """Entry point of the ``imageport`` console script."""
    try:
        app()
    except SystemExit as done:
        _exit(done.code)
    _exit(0)


def _exit(code: str | int | None) -> NoReturn:
    """Leave the process with ``code`` (as ``sys.exit`` would), skipping interpreter teardown.

    A command has closed what it opened (database, broker, stores, files) by the time typer
    returns; what is left is the interpreter tearing down every module and object it loaded,
    about 0.3 s of CPU after an ``imageport import``, more than the import of a small image.
    So once stdout and stderr are flushed and logging is shut down, the process ends at once.
    When a non-daemon thread is still running, the normal exit (which waits for it) is kept.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    status = code or 0
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe has nothing to flush to
            stream.flush()
    os._exit(status)
