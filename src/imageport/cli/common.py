"""What every command shares: settings, services, JSON output, error exits.

Start-up time: ``imageport --help`` and every command import all the command modules, so
those import only typer and the standard library at their top; what a command needs (the
settings, the pipeline, the records, the workers) it imports inside its function. The pipeline
alone takes over a second to import, and ``--help`` or ``stores list`` need none of it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from imageport.errors import ConfigurationError, InvalidRequest, NotFound, PipelineError

if TYPE_CHECKING:
    from imageport.config import Settings
    from imageport.pipeline import Services

#: Progress and errors go to stderr, so stdout carries only the requested output.
err_console = Console(stderr=True)

EXIT_FAILED = 1  # the operation ran and failed (e.g. the import did not end active)
EXIT_USAGE = 2  # the request was wrong: bad arguments, unknown id, bad configuration


def settings() -> Settings:
    """Load the settings once per command and configure logging from them."""
    from imageport.config import load_settings
    from imageport.logging import configure_logging

    loaded = load_settings()
    configure_logging(loaded)
    return loaded


@contextmanager
def services(conf: Settings) -> Iterator[Services]:
    """Open the services; the embedded (SQLite) database migrates itself."""
    from imageport.pipeline import Services

    opened = Services.from_settings(conf)
    try:
        if conf.is_embedded or opened.db.engine.dialect.name == "sqlite":
            opened.db.upgrade()
        yield opened
    finally:
        opened.close()


def print_json(data: object) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def report_error(what: str, code: str | None, message: str) -> None:
    """Print one line ``<what> [code] message`` on stderr, never wrapped or styled away."""
    line = escape(f"[{code}] {message}")
    err_console.print(f"[bold red]{what}[/] {line}", highlight=False, soft_wrap=True)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn imageport errors into one clear line on stderr and a non-zero exit code."""
    try:
        yield
    except PipelineError as exc:
        report_error("error", exc.code, exc.message)
        usage = isinstance(exc, InvalidRequest | NotFound | ConfigurationError)
        raise typer.Exit(EXIT_USAGE if usage else EXIT_FAILED) from exc
