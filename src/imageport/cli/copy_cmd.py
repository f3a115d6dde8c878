"""``imageport copy``: copy an active image to more stores (a copy-image task), and wait."""

from __future__ import annotations

from typing import Annotated

import typer

from imageport.cli.common import (
    EXIT_FAILED,
    errors_to_exit,
    print_json,
    report_error,
    services,
    settings,
)
from imageport.cli.progress import wait_for_task
from imageport.cli.show import render_image
from imageport.pipeline.copy_image import submit_copy
from imageport.records import TaskStatus, repository, serialize
from imageport.workers.actors import declare_actors
from imageport.workers.broker import build_broker
from imageport.workers.embedded import EmbeddedWorker


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
    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        submitted = submit_copy(
            svc,
            image_id,
            store,
            all_stores=all_stores,
            all_stores_must_succeed=not allow_failure,
        )
        ids = {"image_id": submitted.image_id, "task_id": submitted.task_id}
        if conf.is_embedded:
            # No other process will run the job: this one is the worker, even with --no-wait.
            with EmbeddedWorker(svc) as worker:
                worker.actors.enqueue_import(submitted.task_id)
                if no_wait:
                    print_json(ids)
                status = wait_for_task(svc, submitted.task_id, show=not no_wait)
        else:
            declare_actors(build_broker(conf), lambda: svc).enqueue_import(submitted.task_id)
            if no_wait:
                print_json(ids)
                return
            status = wait_for_task(svc, submitted.task_id, show=True)
        if no_wait:
            return
        with svc.db.session() as session:
            image_doc = serialize.image_to_dict(repository.get_image(session, image_id), admin=True)
            task = repository.get_task(session, submitted.task_id)
            message, code = task.message, task.error_code
        if as_json:
            print_json(image_doc)
        else:
            render_image(image_doc)
        if status != TaskStatus.SUCCESS:
            report_error("copy failed", code, message)
            raise typer.Exit(EXIT_FAILED)
