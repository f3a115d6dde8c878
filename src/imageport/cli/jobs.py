"""Running a submitted job from the command line: enqueue, wait, print, exit."""

from __future__ import annotations

import threading
from types import TracebackType

import typer

from imageport.cli.common import EXIT_FAILED, print_json, report_error
from imageport.cli.progress import wait_for_task
from imageport.cli.show import render_image
from imageport.pipeline import Services, Submitted
from imageport.records import ImageStatus, TaskStatus, repository, serialize
from imageport.workers.actors import Actors, declare_actors
from imageport.workers.broker import build_broker
from imageport.workers.embedded import SHORT_LIVED_TIMEOUT_MS, EmbeddedWorker


class Enqueuer:
    """Actors to enqueue with: in-process (embedded worker) or on the shared broker.

    In the embedded mode nothing else will run the job, so the worker thread lives as long as
    this context: a command that enqueues must also wait for the job inside it.
    """

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._embedded: EmbeddedWorker | None = None

    def __enter__(self) -> Actors:
        if self._svc.settings.is_embedded:
            # A command's worker lives for one job: a short poll makes stopping it quick.
            worker = EmbeddedWorker(self._svc, timeout_ms=SHORT_LIVED_TIMEOUT_MS)
            self._embedded = worker.__enter__()
            return self._embedded.actors
        return declare_actors(build_broker(self._svc.settings), lambda: self._svc)

    @property
    def processed(self) -> threading.Event | None:
        """The embedded worker's "a job message was processed" event (None: shared broker)."""
        return self._embedded.processed if self._embedded is not None else None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._embedded is not None:
            self._embedded.__exit__(exc_type, exc, tb)


def run_job(
    svc: Services, submitted: Submitted, *, no_wait: bool, as_json: bool, what: str
) -> None:
    """Enqueue ``submitted``; unless ``no_wait``, show progress, print the image, exit 0/1.

    With ``--no-wait`` the ids are printed at once; in the embedded mode this process is the
    worker, so it still finishes the job before it exits.
    """
    ids = {"image_id": submitted.image_id, "task_id": submitted.task_id}
    enqueuer = Enqueuer(svc)
    with enqueuer as actors:
        actors.enqueue_import(submitted.task_id)
        if no_wait:
            print_json(ids)
            if not svc.settings.is_embedded:
                return
        status = wait_for_task(
            svc, submitted.task_id, show=not no_wait, processed=enqueuer.processed
        )
    if no_wait:
        return
    with svc.db.session() as session:
        image_doc = serialize.image_to_dict(
            repository.get_image(session, submitted.image_id), admin=True
        )
        task = repository.get_task(session, submitted.task_id)
        message, code = task.message, task.error_code
    if as_json:
        print_json(image_doc)
    else:
        render_image(image_doc)
    if status != TaskStatus.SUCCESS or image_doc["status"] != ImageStatus.ACTIVE:
        report_error(f"{what} failed", code, message)
        raise typer.Exit(EXIT_FAILED)
