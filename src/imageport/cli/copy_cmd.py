"""``imageport copy``: copy an active image to more stores (a copy-image task), and wait."""

from __future__ import annotations

from typing import Annotated

import typer

from imageport.cli.common import (
    errors_to_exit,
    services,
    settings,
)


def copy_command(
    image_id: Annotated[str, typer.Argument(help="The id of an active image.")],
    store: Annotated[
        list[str] | None, typer.Option("--store", help="Target store id (repeatable).")
    ] = None,
    all_stores: Annotated[
        bool, typer.Option("--all-stores", help="Copy to every store not holding the image.")
    ] = False,
    allow_failure: Annotated[
        bool,
        typer.Option(
            "--allow-failure",
            help="Keep the copies that worked if some stores fail (all_stores_must_succeed=false).",
        ),
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once queued.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Copy an active image to more stores; it stays active throughout."""
    # Imported here, not at the top: see cli/common.py on start-up time.
    from imageport.cli.jobs import run_job
    from imageport.pipeline import submit_copy

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        submitted = submit_copy(
            svc,
            image_id,
            store,
            all_stores=all_stores,
            all_stores_must_succeed=not allow_failure,
        )
        run_job(svc, submitted, no_wait=no_wait, as_json=as_json, what="copy")
